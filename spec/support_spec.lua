-- Proves the test peers in spec/support/ work, using LuaSocket (and LuaSec
-- for TLS) as a dumb SMTP client: aiosmtpd (plain, STARTTLS, implicit TLS,
-- AUTH, exact recording), the hostile script server, a private Postfix
-- delivering to a Maildir, and smtp-sink.

local servers = require "support.servers"
local socket = require "socket"
local ssl = require "ssl"
local mime = require "mime"

local CRLF = "\r\n"

-- A minimal SMTP client over LuaSocket, enough to drive the peers.
local Client = {}
Client.__index = Client

local function connect(host, port)
  local sock = assert(socket.tcp())
  sock:settimeout(5)
  assert(sock:connect(host, port))
  return setmetatable({ sock = sock }, Client)
end

-- read one reply: code (number), lines (texts after the code)
function Client:reply()
  local lines, code = {}, nil
  repeat
    local line, err = self.sock:receive("*l")
    if not line then return nil, err end
    code = tonumber(line:sub(1, 3))
    lines[#lines + 1] = line:sub(5)
  until line:sub(4, 4) ~= "-"
  return code, lines
end

function Client:send(data)
  assert(self.sock:send(data))
end

function Client:cmd(line)
  self:send(line .. CRLF)
  return self:reply()
end

-- EHLO; returns code and a set of capability keywords (upper case) -> rest
function Client:ehlo(name)
  local code, lines = self:cmd("EHLO " .. (name or "client.test"))
  local caps = {}
  for i = 2, #(lines or {}) do
    local kw, rest = lines[i]:match("^(%S+)%s*(.*)$")
    if kw then caps[kw:upper()] = rest end
  end
  return code, caps
end

-- TLS handshake on the connection, verifying the peer with cafile.
-- diagnose: finish the handshake even when verification fails, then report
-- OpenSSL's reasons (e.g. "certificate has expired") and give up.
-- cert: optional { cert=, key= } client certificate.
function Client:tls(cafile, diagnose, cert)
  local params = { mode = "client", protocol = "any", verify = "peer",
                   options = { "all", "no_sslv2", "no_sslv3" }, cafile = cafile,
                   verifyext = diagnose and { "lsec_continue" } or nil,
                   certificate = cert and cert.cert, key = cert and cert.key }
  local conn = assert(ssl.wrap(self.sock, params))
  conn:sni("localhost")
  conn:settimeout(5)
  local ok, err = conn:dohandshake()
  if not ok then return nil, err end
  if diagnose then
    local verified, why = conn:getpeerverification()
    if not verified then
      local reasons = {}
      for _, errs in pairs(why) do reasons[#reasons + 1] = table.concat(errs, ", ") end
      conn:close()
      return nil, "certificate verify failed: " .. table.concat(reasons, "; ")
    end
  end
  self.sock = conn
  return true
end

function Client:close()
  self.sock:close()
end

-- MAIL, RCPT(s), DATA, body (already dot-stuffed, ending in CRLF), final dot
local function transaction(c, from, rcpts, body, mail_params)
  local code = c:cmd("MAIL FROM:<" .. from .. ">" .. (mail_params and (" " .. mail_params) or ""))
  assert.equal(250, code)
  for _, r in ipairs(rcpts) do
    code = c:cmd("RCPT TO:<" .. r .. ">")
    assert.equal(250, code)
  end
  assert.equal(354, (c:cmd("DATA")))
  c:send(body .. "." .. CRLF)
  return c:reply()
end

local function b64(s) return (mime.b64(s)) end

describe("support.servers", function()
  teardown(function() servers.stop_all() end)

  describe("ca()", function()
    it("creates the CA and the certificates once", function()
      local ca = servers.ca()
      assert.truthy(ca.cafile:match("ca%.pem$"))
      for _, name in ipairs { "good", "wrong-host", "expired", "self-signed", "client" } do
        local c = ca.certs[name]
        assert.truthy(io.open(c.cert), name)
        assert.truthy(io.open(c.key), name)
      end
      assert.equal(ca, servers.ca())
    end)

    it("gives the certificates the intended names and dates", function()
      local x509 = require "ssl.x509"
      local ca = servers.ca()
      local function load(name)
        local f = assert(io.open(ca.certs[name].cert))
        local pem = f:read("*a")
        f:close()
        return assert(x509.load(pem))
      end
      local function sans(cert)
        local ext = cert:extensions()["2.5.29.17"] or {}
        local out = {}
        for _, v in ipairs(ext.dNSName or {}) do out[#out + 1] = v end
        for _, v in ipairs(ext.iPAddress or {}) do out[#out + 1] = v end
        table.sort(out)
        return table.concat(out, " ")
      end
      assert.matches("127.0.0.1", sans(load("good")))
      assert.matches("localhost", sans(load("good")))
      assert.equal("other.example", sans(load("wrong-host")))
      assert.equal("w*.example.test", sans(load("partial-wildcard")))
      assert.is_false(load("expired"):validat(os.time()))
      assert.is_true(load("good"):validat(os.time()))
      local ss = load("self-signed")
      assert.same(ss:issuer(), ss:subject())
    end)
  end)

  describe("aiosmtpd", function()
    it("records a plain-text message with its exact bytes", function()
      local s = servers.aiosmtpd{}
      assert.equal("127.0.0.1", s.host)
      assert.is_number(s.port)
      local c = connect(s.host, s.port)
      assert.equal(220, (c:reply()))
      local code, caps = c:ehlo()
      assert.equal(250, code)
      assert.truthy(caps.PIPELINING and caps["8BITMIME"] and caps.SMTPUTF8 and caps.SIZE)
      assert.is_nil(caps.STARTTLS)
      assert.is_nil(caps.AUTH)
      -- on the wire: dot-stuffed ".." line, 8-bit bytes, a bare LF inside a line
      local wire = "Subject: t\r\n\r\n..leading dot\r\n\195\188ml\195\164ut \255\r\nbare\nlf\r\n"
      local exact = "Subject: t\r\n\r\n.leading dot\r\n\195\188ml\195\164ut \255\r\nbare\nlf\r\n"
      local c2, text = transaction(c, "a@example.org", { "b@example.org", "c@example.org" }, wire,
                                   "BODY=8BITMIME")
      assert.equal(250, c2)
      assert.matches("queued as M1", text[1])
      assert.equal(221, (c:cmd("QUIT")))
      c:close()
      local msgs = s:wait_messages(1, 5)
      assert.equal(1, #msgs)
      local m = msgs[1]
      assert.equal("a@example.org", m.mail_from)
      assert.same({ "b@example.org", "c@example.org" }, m.rcpt_tos)
      assert.same({ "BODY=8BITMIME" }, m.mail_options)
      assert.same({}, m.rcpt_options)
      assert.equal(exact, m.data)
      assert.is_nil(m.auth)
      assert.is_false(m.tls)
      assert.equal(1, s:connections())
      s:stop()
      s:stop() -- idempotent
      assert.is_nil(socket.connect(s.host, s.port))
    end)

    it("keeps SMTPUTF8 addresses and counts connections", function()
      local s = servers.aiosmtpd{ reject_rcpt = { "nobody@example.org" } }
      for _ = 1, 2 do
        local c = connect(s.host, s.port)
        c:reply()
        c:ehlo()
        assert.equal(250, (c:cmd("MAIL FROM:<j\195\182rg@example.org> SMTPUTF8")))
        assert.equal(550, (c:cmd("RCPT TO:<nobody@example.org>")))
        assert.equal(250, (c:cmd("RCPT TO:<\231\148\168\230\136\183@example.org>")))
        assert.equal(354, (c:cmd("DATA")))
        c:send("x\r\n.\r\n")
        assert.equal(250, (c:reply()))
        c:cmd("QUIT")
        c:close()
      end
      local msgs = s:wait_messages(2, 5)
      assert.equal(2, #msgs)
      assert.equal("j\195\182rg@example.org", msgs[1].mail_from)
      assert.same({ "\231\148\168\230\136\183@example.org" }, msgs[1].rcpt_tos)
      assert.is_true(msgs[1].smtputf8)
      assert.equal(2, msgs[2].connection)
      assert.equal(2, s:connections())
    end)

    it("accepts DSN parameters when DSN is among the extensions", function()
      local s = servers.aiosmtpd{ extensions = { "PIPELINING", "DSN" }, size = 1000 }
      local c = connect(s.host, s.port)
      c:reply()
      local _, caps = c:ehlo()
      assert.equal("", caps.DSN)
      assert.equal("1000", caps.SIZE)
      assert.equal(552, (c:cmd("MAIL FROM:<a@example.org> SIZE=1001")))
      assert.equal(250, (c:cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=e1")))
      assert.equal(250, (c:cmd("RCPT TO:<b@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.org")))
      assert.equal(250, (c:cmd("RCPT TO:<c@example.org>")))
      assert.equal(354, (c:cmd("DATA")))
      c:send("x\r\n.\r\n")
      assert.equal(250, (c:reply()))
      c:close()
      local m = s:wait_messages(1, 5)[1]
      assert.same({ "RET=HDRS", "ENVID=E1" }, m.mail_options)   -- aiosmtpd upper-cases them
      assert.same({ "NOTIFY=FAILURE,DELAY", "ORCPT=RFC822;B@EXAMPLE.ORG" }, m.rcpts[1].options)
      assert.same({}, m.rcpts[2].options)
    end)

    it("does STARTTLS with the CA verified, then AUTH PLAIN", function()
      local s = servers.aiosmtpd{ tls = "starttls", require_starttls = true,
                                  auth = { user = "u", password = "p\195\169" } }
      local c = connect(s.host, s.port)
      c:reply()
      local _, caps = c:ehlo()
      assert.truthy(caps.STARTTLS)
      assert.is_nil(caps.AUTH) -- auth_require_tls: not offered in clear text
      assert.equal(530, (c:cmd("MAIL FROM:<a@example.org>")))
      assert.equal(220, (c:cmd("STARTTLS")))
      assert(c:tls(s.cafile))
      local _, caps2 = c:ehlo()
      assert.is_nil(caps2.STARTTLS)
      assert.matches("PLAIN", caps2.AUTH)
      assert.matches("LOGIN", caps2.AUTH)
      assert.equal(535, (c:cmd("AUTH PLAIN " .. b64("\0u\0wrong"))))
      assert.equal(235, (c:cmd("AUTH PLAIN " .. b64("\0u\0p\195\169"))))
      assert.equal(250, (transaction(c, "a@example.org", { "b@example.org" }, "hello\r\n")))
      c:cmd("QUIT")
      c:close()
      local m = s:wait_messages(1, 5)[1]
      assert.equal("u", m.auth)
      assert.equal("PLAIN", m.auth_mechanism)
      assert.is_true(m.tls)
      assert.equal("hello\r\n", m.data)
    end)

    it("serves implicit TLS, where AUTH and XOAUTH2 work", function()
      local s = servers.aiosmtpd{ tls = "implicit", auth = { user = "u", password = "tok" } }
      local c = connect(s.host, s.port)
      assert(c:tls(s.cafile))
      assert.equal(220, (c:reply()))
      local _, caps = c:ehlo()
      assert.is_nil(caps.STARTTLS)
      assert.matches("XOAUTH2", caps.AUTH)
      -- a bad token: 334 with a JSON error, the client answers with an empty line, then 535
      local code, text = c:cmd("AUTH XOAUTH2 " .. b64("user=u\1auth=Bearer bad\1\1"))
      assert.equal(334, code)
      assert.matches('"status"', (mime.unb64(text[1])))
      assert.equal(535, (c:cmd("")))
      assert.equal(235, (c:cmd("AUTH XOAUTH2 " .. b64("user=u\1auth=Bearer tok\1\1"))))
      assert.equal(250, (transaction(c, "a@example.org", { "b@example.org" }, "x\r\n")))
      c:close()
      local m = s:wait_messages(1, 5)[1]
      assert.equal("u", m.auth)
      assert.equal("XOAUTH2", m.auth_mechanism)
      assert.is_true(m.tls)
    end)

    it("records the subject of a client certificate", function()
      local s = servers.aiosmtpd{ tls = "implicit", client_cert = "require" }
      local c = connect(s.host, s.port)
      assert(c:tls(s.cafile, false, servers.ca().certs.client))
      assert.equal(220, (c:reply()))
      c:ehlo()
      assert.equal(250, (transaction(c, "a@example.org", { "b@example.org" }, "x\r\n")))
      c:close()
      assert.equal("mailer test client", s:wait_messages(1, 5)[1].client_cert)
    end)

    it("offers AUTH in clear text only when asked to, and only the listed mechanisms", function()
      local s = servers.aiosmtpd{ auth = { user = "u", password = "p", mechanisms = { "LOGIN" } },
                                  auth_require_tls = false, auth_required = true }
      local c = connect(s.host, s.port)
      c:reply()
      local _, caps = c:ehlo()
      assert.equal("LOGIN", caps.AUTH)
      assert.equal(530, (c:cmd("MAIL FROM:<a@example.org>")))
      assert.equal(504, (c:cmd("AUTH PLAIN " .. b64("\0u\0p"))))
      assert.equal(334, (c:cmd("AUTH LOGIN")))
      assert.equal(334, (c:cmd(b64("u"))))
      assert.equal(235, (c:cmd(b64("p"))))
      c:close()
    end)

    it("fails the handshake for an expired certificate", function()
      local s = servers.aiosmtpd{ tls = "implicit", cert = "expired" }
      local c = connect(s.host, s.port)
      local ok, err = c:tls(s.cafile, true)
      assert.is_nil(ok)
      assert.matches("certificate has expired", err)
      c:close()
    end)

    it("reports a server that cannot start, with its stderr", function()
      local ok, err = pcall(servers.aiosmtpd, { tls = "starttls", cert = "no-such-cert" })
      assert.is_false(ok)
      assert.matches("exited before it was ready", err)
      assert.matches("No such file", err)
    end)
  end)

  describe("hostile", function()
    it("runs a script and records the client's exact bytes", function()
      local h = servers.hostile{
        { send = "220 hostile ESMTP\r\n" },
        { expect = "ehlo" },
        { send = "250-hostile\r\n250 PIPELINING\r\n" },
        { expect = "MAIL" },
        { send = "250 ok\r\n250 ok" },      -- a reply and a half
        { sleep = 0.1 },
        { send = "\r\n" },
        { expect = "DATA" },
        { send = "354 go\r\n" },
        { expect_data = true },
        { send = "250 queued\r\n" },
      }
      local c = connect(h.host, h.port)
      assert.equal(220, (c:reply()))
      assert.equal(250, (c:ehlo()))
      c:send("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
      assert.equal(250, (c:reply()))
      assert.equal(250, (c:reply()))
      assert.equal(354, (c:cmd("DATA")))
      c:send("line\r\n..dot\r\n\255\0\r\n.\r\n")
      assert.equal(250, (c:reply()))
      c:send("QUIT\r\n")
      assert.is_nil(c:reply()) -- the script is over: the server closes
      c:close()
      assert.is_true(h:wait(5))
      assert.equal("EHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" ..
                   "line\r\n..dot\r\n\255\0\r\n.\r\nQUIT\r\n", h:received())
    end)

    it("reports a client that went away while a step waited", function()
      local h = servers.hostile{ { send = "220 hi\r\n" }, { expect = "EHLO" }, { send = "250 ok\r\n" },
                                 { expect = "MAIL" } }
      local c = connect(h.host, h.port)
      c:reply()
      c:ehlo()
      c:send("QUIT\r\n")
      c:close()
      local ok, err = h:wait(5)
      assert.is_false(ok)
      assert.matches("closed the connection while expecting 'MAIL'", err)
      assert.equal("EHLO client.test\r\nQUIT\r\n", h:received())
    end)

    it("does TLS inside the script and records the decrypted bytes", function()
      local h = servers.hostile{
        { send = "220 hi\r\n" }, { expect = "EHLO" }, { send = "250 STARTTLS\r\n" },
        { expect = "STARTTLS" }, { send = "220 go\r\n" }, { tls = "good" },
        { expect = "EHLO" }, { send = "250 tls\r\n" }, { expect = "QUIT" }, { send = "221 bye\r\n" },
      }
      local c = connect(h.host, h.port)
      c:reply()
      c:ehlo()
      assert.equal(220, (c:cmd("STARTTLS")))
      assert(c:tls(h.cafile))
      assert.equal(250, (c:cmd("EHLO again")))
      assert.equal(221, (c:cmd("QUIT")))
      c:close()
      assert.is_true(h:wait(5))
      assert.equal("EHLO client.test\r\nSTARTTLS\r\nEHLO again\r\nQUIT\r\n", h:received())
    end)

    it("sees a client reject its certificate", function()
      local h = servers.hostile{ { send = "220 hi\r\n" }, { expect = "STARTTLS" },
                                 { send = "220 go\r\n" }, { tls = "self-signed" } }
      local c = connect(h.host, h.port)
      c:reply()
      c:cmd("STARTTLS")
      local ok, err = c:tls(h.cafile)
      assert.is_nil(ok)
      assert.matches("certificate verify failed", err)
      c:close()
      local done, why = h:wait(5)
      assert.is_false(done)
      assert.matches("TLS handshake failed", why)
    end)

    it("trickles, floods and serves several connections", function()
      local h = servers.hostile{
        connections = 2,
        { trickle = "220 ok\r\n", interval = 0.05 },
        { flood = "250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n", bytes = 200000 },
        { close = true },
      }
      for _ = 1, 2 do
        local c = connect(h.host, h.port)
        local t0 = socket.gettime()
        assert.equal("220 ok", c.sock:receive("*l"))
        assert.is_true(socket.gettime() - t0 >= 0.3)
        local got = 0
        while true do
          local line = c.sock:receive("*l")
          if not line then break end
          got = got + #line + 2
        end
        assert.equal(200000, got)
        c:close()
      end
      assert.is_true(h:wait(5))
      assert.equal(2, h:status().connections)
    end)

    it("stops quietly when the client leaves during a flood", function()
      local h = servers.hostile{ { flood = "250-x\r\n", bytes = 100000000 }, timeout = 2 }
      local c = connect(h.host, h.port)
      c.sock:receive(1000)
      c:close()
      assert.is_true(h:wait(5))
      assert.matches("went away", h:status().notes[1])
    end)
  end)

  describe("postfix", function()
    local ok_pf, why = servers.have_postfix()
    local run = ok_pf and it or pending

    run("delivers a message into its Maildir" .. (ok_pf and "" or (": " .. tostring(why))), function()
      local p = servers.postfix{}
      local c = connect(p.host, p.port)
      assert.equal(220, (c:reply()))
      local _, caps = c:ehlo()
      for _, kw in ipairs { "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING" } do
        assert.truthy(caps[kw], kw)
      end
      assert.equal(250, (c:cmd("MAIL FROM:<sender@example.org> BODY=8BITMIME")))
      assert.equal(250, (c:cmd("RCPT TO:<alice@test.example>")))
      assert.equal(550, (c:cmd("RCPT TO:<unknown-user@test.example>")))
      assert.equal(554, (c:cmd("RCPT TO:<someone@elsewhere.example>")))
      assert.equal(354, (c:cmd("DATA")))
      c:send("From: sender@example.org\r\nTo: alice@test.example\r\nSubject: via postfix\r\n" ..
             "\r\nH\195\164llo\r\n..dot\r\n.\r\n")
      assert.equal(250, (c:reply()))
      c:cmd("QUIT")
      c:close()
      local msgs, err = p:wait_messages(1, 20)
      assert.equal(1, #msgs, err)
      local m = msgs[1]
      assert.matches("Delivered%-To: alice@test%.example\n", m)
      assert.matches("\nSubject: via postfix\n\nH\195\164llo\n%.dot\n$", m)
      assert.equal("alice@test.example", p:deliveries()[1].recipient)
      assert.matches("\r\nSubject: via postfix\r\n\r\nH\195\164llo\r\n%.dot\r\n$",
                     p:messages{ crlf = true }[1])
      p:stop()
      assert.is_nil(socket.connect(p.host, p.port))
    end)
  end)

  describe("smtp_sink", function()
    it("accepts and discards mail", function()
      local k = servers.smtp_sink{}
      local c = connect(k.host, k.port)
      assert.equal(220, (c:reply()))
      local _, caps = c:ehlo()
      assert.truthy(caps.PIPELINING)
      assert.equal(250, (transaction(c, "a@example.org", { "b@example.org" }, "x\r\n")))
      c:cmd("QUIT")
      c:close()
      k:stop()
    end)
  end)

  it("gives a free port", function()
    local port = servers.free_port()
    assert.is_number(port)
    assert.is_true(port > 1024)
  end)

  it("stop_all stops every server", function()
    local a = servers.aiosmtpd{}
    local h = servers.hostile{ { sleep = 30 } }
    servers.stop_all()
    assert.is_false(a:alive())
    assert.is_false(h:alive())
    assert.is_nil(socket.connect(a.host, a.port))
  end)
end)
