-- mailer.Socket (core.socket()): the C socket with the cosocket method set,
-- against real peers on 127.0.0.1 (aiosmtpd, the scripted hostile server,
-- the test CA): SMTP dialogues in plaintext, over STARTTLS and implicit
-- TLS, certificate failures, timeouts, EOF, close and collection, gathered
-- and large writes. Errors are nil, "timeout" | "closed" | message, kind.
local core = require "mailer.core"
local servers = require "support.servers"
local socket = require "socket"

local HOST = servers.host

-- A socket connected to server s, with short timeouts.
local function open(s, ms)
  local sock = core.socket()
  sock:settimeout(ms or 5000)
  assert(sock:connect(HOST, s.port))
  return sock
end

-- Read one SMTP reply (all its lines); returns the lines joined with "\n".
local function reply(sock)
  local lines = {}
  while true do
    local line, err, partial = sock:receive("*l")
    assert(line, tostring(err) .. " after " .. tostring(partial))
    lines[#lines + 1] = line
    if line:match("^%d%d%d ") or line:match("^%d%d%d$") then break end
  end
  return table.concat(lines, "\n")
end

-- Send a command and read its reply.
local function cmd(sock, line)
  assert.are.equal(#line + 2, sock:send(line .. "\r\n"))
  return reply(sock)
end

-- A server that does a TLS handshake with the named certificate at once.
local function tls_peer(cert)
  return servers.hostile { { tls = cert }, { send = "220 tls.test ESMTP\r\n" },
                           { read_all = true, timeout = 5 }, linger = 0.5 }
end

describe("mailer.Socket", function()
  local ca
  setup(function() ca = servers.ca() end)
  teardown(function() servers.stop_all() end)

  describe("plaintext", function()
    it("reads the greeting, sends EHLO and gets the reply with receiveany", function()
      local s = servers.aiosmtpd {}
      local sock = open(s)
      local greeting = assert(sock:receive("*l"))
      assert.matches("^220 ", greeting)
      assert.are.equal(8, sock:send("EHLO x\r\n"))
      local got = assert(sock:receiveany(65536))
      assert.matches("^250[- ]", got)
      sock:close()
    end)

    it("runs a whole SMTP dialogue up to QUIT, then sees the server close", function()
      local s = servers.aiosmtpd {}
      local sock = open(s)
      assert.matches("^220 ", reply(sock))
      assert.matches("^250", cmd(sock, "EHLO client.test"))
      assert.matches("^250", cmd(sock, "MAIL FROM:<a@example.com>"))
      assert.matches("^250", cmd(sock, "RCPT TO:<b@example.com>"))
      assert.matches("^354", cmd(sock, "DATA"))
      local body = { "Subject: plain\r\n", "\r\n", "hello ", "world", "\r\n.\r\n" }
      assert.are.equal(#table.concat(body), sock:send(body))
      assert.matches("^250", reply(sock))
      assert.matches("^221", cmd(sock, "QUIT"))
      local data, err, kind = sock:receiveany(100)
      assert.is_nil(data)
      assert.are.equal("closed", err)
      assert.are.equal("network", kind)
      assert.are.equal(-1, sock:getfd())
      local msgs = assert(s:wait_messages(1))
      assert.is_false(msgs[1].tls)
      assert.matches("hello world", msgs[1].data)
    end)

    it("receives exact byte counts, lines without CR, and everything up to EOF", function()
      local h = servers.hostile { { send = "abcdefghij\r\nline two\nx\ry\r\nrest of it" },
                                  { close = "now" } }
      local sock = open(h)
      assert.are.equal("", sock:receive(0))
      assert.are.equal("abc", sock:receive(3))
      assert.are.equal("defghij", sock:receive("*l"))
      assert.are.equal("line two", sock:receive("l"))
      assert.are.equal("xy", sock:receive())
      assert.are.equal("rest", sock:receiveany(4))
      assert.are.equal(" of it", sock:receive("*a"))
      assert.are.same({ nil, "closed", "", "network" }, { sock:receive("*l") })
    end)

    it("returns the partial data when the peer closes inside receive", function()
      local h = servers.hostile { { send = "no newline" }, { close = "now" } }
      local sock = open(h)
      assert.are.same({ nil, "closed", "no newline", "network" }, { sock:receive("*l") })
      assert.are.same({ nil, "closed", "network" }, { sock:receiveany(10) })
    end)

    it("sends a table of strings (and numbers) in order, across batches and buffer sizes", function()
      local h = servers.hostile { { read_all = true, timeout = 5 } }
      local sock = open(h)
      local parts, n = {}, 0
      for i = 1, 300 do
        local piece
        if i % 50 == 0 then piece = string.rep(string.char(65 + i % 26), 20000 + i)
        elseif i % 7 == 0 then piece = i
        elseif i % 11 == 0 then piece = ""
        else piece = ("<%d>"):format(i) end
        parts[i] = piece
        n = n + #tostring(piece)
      end
      assert.are.equal(n, sock:send(parts))
      assert.are.equal(0, sock:send({}))
      sock:close()
      assert.is_true(h:wait(5))
      local want = {}
      for i, p in ipairs(parts) do want[i] = tostring(p) end
      assert.are.equal(table.concat(want), h:received())
    end)

    it("sends 4 MiB to a server that reads slowly, all of it, in one call", function()
      local h = servers.hostile { { sleep = 1 }, { read_all = true, timeout = 10 } }
      local sock = open(h, 15000)
      local big = string.rep("0123456789abcdef", 4 * 65536)
      assert.are.equal(4 * 1024 * 1024, sock:send(big))
      sock:close()
      assert.is_true(h:wait(10))
      assert.are.equal(#big, #h:received())
      assert.is_true(h:received() == big)
    end)

    it("connect on a connected socket closes the old connection", function()
      local a = servers.hostile { { read_all = true, timeout = 5 } }
      local b = servers.hostile { { send = "220 b\r\n" }, { read_all = true, timeout = 5 } }
      local sock = open(a)
      local fd = sock:getfd()
      assert.is_true(fd >= 0)
      assert.are.equal(1, sock:connect(HOST, b.port, { pool = "ignored" }))
      assert.is_true(a:wait(5))   -- a saw EOF
      assert.are.equal("220 b", sock:receive("*l"))
      sock:close()
    end)
  end)

  describe("errors", function()
    it("connect to a closed port: nil, message, network", function()
      local sock = core.socket()
      local ok, err, kind = sock:connect(HOST, servers.free_port())
      assert.is_nil(ok)
      assert.matches("cannot connect to 127.0.0.1 port %d+", err)
      assert.matches("refused", err)
      assert.are.equal("network", kind)
      assert.are.equal("mailer.Socket (closed)", tostring(sock):match("^(.-): 0x%x+$"))
    end)

    it("a read timeout is nil, timeout, timeout within the time, and the socket stays usable", function()
      local h = servers.hostile { { sleep = 1.5 }, { send = "220 late\r\n" }, { read_all = true } }
      local sock = open(h)
      sock:settimeouts(nil, nil, 200)
      local t0 = socket.gettime()
      assert.are.same({ nil, "timeout", "timeout" }, { sock:receiveany(100) })
      local took = socket.gettime() - t0
      assert.is_true(took >= 0.15 and took < 1, "took " .. took)
      assert.are.same({ nil, "timeout", "", "timeout" }, { sock:receive("*l") })
      sock:settimeouts(nil, nil, 5000)
      assert.are.equal("220 late", sock:receive("*l"))
      sock:close()
    end)

    it("the read timeout is a deadline for the whole receive, not per byte", function()
      local h = servers.hostile { { trickle = "220 a slow line\r\n", interval = 0.1 },
                                  { read_all = true } }
      local sock = open(h)
      sock:settimeouts(nil, nil, 500)
      local t0 = socket.gettime()
      local line, err, partial, kind = sock:receive("*l")
      local took = socket.gettime() - t0
      assert.is_nil(line)
      assert.are.equal("timeout", err)
      assert.are.equal("timeout", kind)
      assert.is_true(#partial > 0 and #partial < 15, partial)
      assert.is_true(took < 1.2, "took " .. took)
      sock:close()
    end)

    it("a send timeout is nil, timeout, timeout and closes the socket", function()
      local h = servers.hostile { { sleep = 10 }, { close = "now" } }   -- never reads
      local sock = open(h)
      sock:settimeouts(nil, 300, nil)
      local big = string.rep("x", 32 * 1024 * 1024)
      local t0 = socket.gettime()
      assert.are.same({ nil, "timeout", "timeout" }, { sock:send(big) })
      local took = socket.gettime() - t0
      assert.is_true(took >= 0.25 and took < 2, "took " .. took)
      assert.are.same({ nil, "closed", "network" }, { sock:send("more") })
    end)

    it("close is idempotent and I/O after it is nil, closed", function()
      local h = servers.hostile { { send = "220 hi\r\n" }, { read_all = true } }
      local sock = open(h)
      assert.matches("^mailer.Socket %(open%): 0x%x+$", tostring(sock))
      assert.are.equal(1, sock:close())
      assert.are.equal(1, sock:close())
      assert.matches("^mailer.Socket %(closed%): 0x%x+$", tostring(sock))
      assert.are.same({ nil, "closed", "network" }, { sock:send("x") })
      assert.are.same({ nil, "closed", "network" }, { sock:receiveany(10) })
      assert.are.same({ nil, "closed", "", "network" }, { sock:receive(5) })
      assert.are.same({ nil, "closed", "network" }, { sock:sslhandshake(nil, "localhost", true) })
      assert.are.equal(-1, sock:getfd())
      assert.is_true(h:wait(5))
    end)

    it("a collected open socket closes its connection", function()
      local h = servers.hostile { { read_all = true, timeout = 5 } }
      do
        local sock = open(h)
        assert(sock:send("bye"))
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(h:wait(5))
      assert.are.equal("bye", h:received())
    end)

    if _VERSION == "Lua 5.4" then
      it("a to-be-closed socket closes at the end of its scope", function()
        local h = servers.hostile { { read_all = true, timeout = 5 } }
        local chunk = assert(load([[
          local core, host, port = ...
          local sock <close> = core.socket()
          assert(sock:connect(host, port))
          assert(sock:send("scoped"))
          return sock
        ]]))
        local sock = chunk(core, HOST, h.port)
        assert.is_true(h:wait(5))
        assert.are.equal("scoped", h:received())
        assert.are.same({ nil, "closed", "network" }, { sock:send("x") })
      end)
    end

    it("setkeepalive is not available", function()
      local sock = core.socket()
      assert.are.same({ nil, "setkeepalive is only available on nginx cosockets", "unsupported" },
                      { sock:setkeepalive() })
    end)

    it("settls with a missing file: nil, message, input", function()
      local sock = core.socket()
      local ok, err, kind = sock:settls { cafile = "/nonexistent/ca.pem" }
      assert.is_nil(ok)
      assert.matches("cannot load the CA certificates %(/nonexistent/ca.pem%)", err)
      assert.are.equal("input", kind)
      ok, err, kind = sock:settls { certfile = "/nonexistent/client.pem" }
      assert.is_nil(ok)
      assert.matches("cannot load the client certificate", err)
      assert.are.equal("input", kind)
    end)

    it("raises on misuse", function()
      local sock = core.socket()
      assert.has_error(function() sock:settimeouts("soon") end)
      assert.has_error(function() sock:settimeouts(nil, {}) end)
      assert.has_error(function() sock:settimeout(-1) end)
      assert.has_error(function() sock:settimeout() end)
      assert.has_error(function() sock:connect(HOST) end)
      assert.has_error(function() sock:connect(HOST, 0) end)
      assert.has_error(function() sock:connect(HOST, 70000) end)
      assert.has_error(function() sock:connect(HOST, 25, "pool") end)
      assert.has_error(function() sock:send(true) end)
      assert.has_error(function() sock:send({ "a", {} }) end)
      assert.has_error(function() sock:receive("*x") end)
      assert.has_error(function() sock:receive(-1) end)
      assert.has_error(function() sock:receiveany(0) end)
      assert.has_error(function() sock:sslhandshake(nil, "localhost", "yes") end)
      assert.has_error(function() sock:settls("ca.pem") end)
      assert.has_error(function() sock:settls { cafile = 1 } end)
      assert.has_error(function() sock.close({}) end)
    end)

    it("clamps huge timeouts instead of overflowing", function()
      local h = servers.hostile { { send = "220 hi\r\n" }, { read_all = true } }
      local sock = core.socket()
      assert.are.equal(1, sock:settimeouts(math.huge, 1e16, 2 ^ 53))
      assert(sock:connect(HOST, h.port))
      assert.are.equal("220 hi", sock:receive("*l"))
      sock:settimeout(math.huge)
      assert.are.equal(2, sock:send("ok"))
      sock:close()
    end)
  end)

  describe("TLS", function()
    it("upgrades with STARTTLS, verifying the certificate with a cafile", function()
      local s = servers.aiosmtpd { tls = "starttls" }
      local sock = open(s)
      assert.matches("^220 ", reply(sock))
      assert.matches("STARTTLS", cmd(sock, "EHLO client.test"))
      assert.matches("^220", cmd(sock, "STARTTLS"))
      assert.is_true(sock:settls { cafile = ca.cafile })
      assert.is_true(sock:sslhandshake(nil, "localhost", true))
      assert.matches("^250", cmd(sock, "EHLO client.test"))
      assert.matches("^250", cmd(sock, "MAIL FROM:<a@example.com>"))
      assert.matches("^250", cmd(sock, "RCPT TO:<b@example.com>"))
      assert.matches("^354", cmd(sock, "DATA"))
      assert(sock:send { "Subject: tls\r\n\r\n", "over TLS\r\n", ".\r\n" })
      assert.matches("^250", reply(sock))
      assert.matches("^221", cmd(sock, "QUIT"))
      assert.are.same({ nil, "closed", "network" }, { sock:receiveany(10) })
      local msgs = assert(s:wait_messages(1))
      assert.is_true(msgs[1].tls)
      assert.matches("over TLS", msgs[1].data)
    end)

    it("speaks implicit TLS, by IP address too", function()
      local s = servers.aiosmtpd { tls = "implicit" }
      for _, name in ipairs { "localhost", "127.0.0.1" } do
        local sock = open(s)
        assert.is_true(sock:settls { cafile = ca.cafile })
        assert.is_true(sock:sslhandshake(nil, name, true))
        assert.matches("^220 ", reply(sock))
        assert.matches("^221", cmd(sock, "QUIT"))
        sock:close()
      end
    end)

    it("sends 4 MiB over TLS to a slow reader", function()
      -- The client reads the server's reply before it closes, as an SMTP
      -- client does: closing with unread TLS 1.3 session tickets in the
      -- socket would send a reset, and the peer could lose unread data.
      local h = servers.hostile { { tls = "good" }, { sleep = 1 }, { expect = "END", timeout = 10 },
                                  { send = "250 got it\r\n" }, { read_all = true } }
      local sock = open(h, 15000)
      assert.is_true(sock:settls { cafile = ca.cafile })
      assert.is_true(sock:sslhandshake(nil, "localhost", true))
      local big = string.rep("tls bytes ", 419431):sub(1, 4 * 1024 * 1024) .. "\r\nEND\r\n"
      assert.are.equal(#big, sock:send(big))
      assert.are.equal("250 got it", sock:receive("*l"))
      sock:close()
      assert.is_true(h:wait(10))
      assert.is_true(h:received() == big)
    end)

    it("sees a TLS peer that closes without close_notify as closed", function()
      local h = servers.hostile { { tls = "good" }, { send = "220 x\r\n" }, { close = "now" } }
      local sock = open(h)
      assert.is_true(sock:settls { cafile = ca.cafile })
      assert.is_true(sock:sslhandshake(nil, "localhost", true))
      assert.are.equal("220 x", sock:receive("*l"))
      assert.are.same({ nil, "closed", "network" }, { sock:receiveany(10) })
    end)

    local failures = {
      { cert = "untrusted", name = "localhost", why = "unknown %(untrusted%) CA" },
      { cert = "self-signed", name = "localhost", why = "self%-signed" },
      { cert = "expired", name = "localhost", why = "expired" },
      { cert = "wrong-host", name = "localhost", why = "host name mismatch" },
      { cert = "partial-wildcard", name = "www.example.test", why = "host name mismatch" },
    }
    for _, f in ipairs(failures) do
      it("refuses a certificate: " .. f.cert, function()
        local h = tls_peer(f.cert)
        local sock = open(h)
        assert.is_true(sock:settls { cafile = ca.cafile })
        local ok, err, kind = sock:sslhandshake(nil, f.name, true)
        assert.is_nil(ok)
        assert.matches("certificate verification", err)
        assert.matches(f.why, err)
        assert.are.equal("tls", kind)
        assert.are.equal(-1, sock:getfd())   -- a failed handshake closes
        assert.are.same({ nil, "closed", "network" }, { sock:send("x") })
      end)
    end

    it("accepts an untrusted certificate with verify = false (and with verify nil)", function()
      local h = servers.hostile {
        scripts = {
          { { tls = "untrusted" }, { send = "220 a\r\n" }, { read_all = true, timeout = 5 } },
          { { tls = "untrusted" }, { send = "220 b\r\n" }, { read_all = true, timeout = 5 } },
        },
      }
      local sock = open(h)
      assert.is_true(sock:sslhandshake(nil, "localhost", false))
      assert.are.equal("220 a", sock:receive("*l"))
      sock:close()
      assert.are.equal(1, sock:connect(HOST, h.port))
      assert.is_true(sock:sslhandshake(nil, "localhost"))
      assert.are.equal("220 b", sock:receive("*l"))
      sock:close()
    end)

    it("presents a client certificate given to settls", function()
      local h = servers.hostile { { tls = "good", client_cert = "require" }, { send = "220 ok\r\n" },
                                  { read_all = true, timeout = 5 } }
      local sock = open(h)
      local client = ca.certs.client
      assert.is_true(sock:settls { cafile = ca.cafile, certfile = client.cert, keyfile = client.key })
      assert.is_true(sock:sslhandshake(nil, "localhost", true))
      assert.are.equal("220 ok", sock:receive("*l"))
      sock:close()
      assert.is_true(h:wait(5))
    end)

    it("refuses the handshake when plaintext arrived after the STARTTLS reply", function()
      local h = servers.hostile { { send = "220 go ahead\r\n250 injected\r\n" }, { read_all = true } }
      local sock = open(h)
      socket.sleep(0.2)
      assert.are.equal("220 go ahead", sock:receive("*l"))
      local ok, err, kind = sock:sslhandshake(nil, "localhost", true)
      assert.is_nil(ok)
      assert.matches("plaintext", err)
      assert.are.equal("tls", kind)
      assert.are.equal(-1, sock:getfd())
    end)

    it("a handshake timeout is nil, timeout, timeout", function()
      local h = servers.hostile { { sleep = 10 }, { close = "now" } }   -- never answers
      local sock = open(h)
      sock:settimeouts(300, nil, nil)
      local t0 = socket.gettime()
      assert.are.same({ nil, "timeout", "timeout" }, { sock:sslhandshake(nil, "localhost", true) })
      assert.is_true(socket.gettime() - t0 < 1.5)
    end)
  end)
end)
