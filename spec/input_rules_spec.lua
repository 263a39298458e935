-- The input rules on every path (issue 13): envelope and credentials
-- checked before anything is sent, one-line error texts, non-ASCII
-- addresses in any header, timeouts, quoted local parts, content types,
-- server text on a terminal, the DKIM spool file. Every case here failed
-- before the rules were added.
local mailer = require "mailer"
local core = require "mailer.core"
local servers = require "support.servers"
local compat = require "support.compat"
local transports = require "support.transports"

local GREET = { send = "220 mx.test ESMTP\r\n" }

-- greeting, EHLO with caps, then the rest of the steps
local function script(caps, ...)
  local s = { GREET, { expect = "EHLO" }, { send = caps } }
  for _, st in ipairs { ... } do s[#s + 1] = st end
  return s
end

local function base(t)
  local m = { from = "alice@example.com", to = "bob@example.com", subject = "s", text = "body" }
  for k, v in pairs(t or {}) do m[k] = v end
  return m
end

local function msg(t) return assert(mailer.message(base(t))) end

-- no control character (C0, DEL) anywhere in s
local function no_controls(s)
  return s:find("[%z\1-\31\127]") == nil
end

for _, tr in ipairs(transports.list()) do
describe("input rules (" .. tr.name .. ")", function()
  teardown(function() servers.stop_all() end)

  local function connect(h, t)
    local o = { host = "127.0.0.1", port = h.port, security = "none", timeout = 5, helo = "client.test" }
    for k, v in pairs(t or {}) do o[k] = v end
    return tr.connect(o)
  end

  describe("envelope (item 1)", function()
    it("refuses CR, LF and NUL in envelope.from and envelope.to; nothing but QUIT is sent", function()
      local h = servers.hostile(script("250-mx\r\n250 PIPELINING\r\n", { expect = "QUIT" },
                                       { send = "221 bye\r\n" }, { read_all = true }))
      local c = assert(connect(h))
      local cases = {
        { { from = "ceo@bank.example\0@mycompany.example" }, "envelope.from" },
        { { from = "a@example.com\r\nRCPT TO:<x@evil.test>" }, "envelope.from" },
        { { to = { "b@example.com", "c@example.com\0@evil.test" } }, "envelope.to[2]" },
        { { to = { "c@example.com\nRSET" } }, "envelope.to[1]" },
        { { to = "c@example.com\r" }, "envelope.to[1]" },
        { { to = { '"x> NOTIFY=SUCCESS ORCPT=rfc822;spy@evil.test"@d.test' } }, "envelope.to[1]" },
      }
      for _, case in ipairs(cases) do
        local r, err = c:send(msg(), { envelope = case[1] })
        assert.is_nil(r)
        assert.are.equal("input", err.kind)
        assert.are.equal(case[2], err.field)
        assert.is_true(no_controls(tostring(err)))
      end
      local results = c:send_many({ base(), base() },
        { envelope = { from = "ceo@bank.example\0@mycompany.example" } })
      assert.are.equal(2, #results)
      for i = 1, 2 do
        assert.are.equal("input", results[i].error.kind)
        assert.are.equal("envelope.from", results[i].error.field)
      end
      c:close()
      h:wait(5)
      assert.are.equal("EHLO client.test\r\nQUIT\r\n", h:received())
    end)
  end)

  describe("credentials (item 2)", function()
    it("refuses CR, LF or NUL in the username, NUL in the password, before connecting", function()
      local s = servers.aiosmtpd { auth = { user = "u", password = "p" }, auth_require_tls = false }
      local cases = {
        { { username = "u\r\nMAIL FROM:<x@evil.test>", password = "p" }, "username" },
        { { username = "u\nx", password = "p" }, "username" },
        { { username = "u\rx", password = "p" }, "username" },
        { { username = "u\0x", password = "p" }, "username" },
        { { username = "u", password = "p\0q" }, "password" },
        { { username = "u", token = "t\r\nQUIT" }, "token" },
        { { username = "u", token = function() return "t\0x" end }, "token" },
      }
      for _, case in ipairs(cases) do
        local o = { host = s.host, port = s.port, security = "none", allow_plaintext_auth = true,
                    timeout = 5 }
        for k, v in pairs(case[1]) do o[k] = v end
        local c, err = tr.connect(o)
        assert.is_nil(c)
        assert.are.equal("input", err.kind)
        assert.are.equal(case[2], err.field)
      end
      assert.are.equal(0, s:connections())
      -- the same server takes good credentials
      local c = assert(tr.connect { host = s.host, port = s.port, security = "none",
                                    allow_plaintext_auth = true, username = "u", password = "p" })
      c:close()
    end)
  end)

  describe("timeouts (item 5)", function()
    it("refuses a timeout that is not a positive number of seconds up to one day", function()
      local s = servers.aiosmtpd {}
      for _, t in ipairs { math.huge, 1e16, 86400.5, 0, -1, 0 / 0 } do
        local c, err = tr.connect { host = s.host, port = s.port, security = "none", timeout = t }
        assert.is_nil(c)
        assert.are.equal("input", err.kind)
        assert.are.equal("timeout", err.field)
      end
      assert.are.equal(0, s:connections())
      local c = assert(tr.connect { host = s.host, port = s.port, security = "none", timeout = 86400 })
      assert.is_true(c:noop())
      c:close()
    end)
  end)

  describe("non-ASCII header addresses (item 4)", function()
    for _, role in ipairs { "reply_to", "sender" } do
      it("a non-ASCII local part in " .. role .. " needs SMTPUTF8, like From and To", function()
        local no = servers.aiosmtpd { smtputf8 = false }
        local c = assert(tr.connect { host = no.host, port = no.port, security = "none" })
        local r, err = c:send(base { [role] = "jörg@example.com" })
        assert.is_nil(r)
        assert.are.equal("unsupported", err.kind)
        assert.matches("SMTPUTF8", err.message)
        c:close()
        local yes = servers.aiosmtpd { smtputf8 = true }
        c = assert(tr.connect { host = yes.host, port = yes.port, security = "none" })
        assert(c:send(base { [role] = "jörg@example.com" }))
        c:close()
        local got = yes:wait_messages(1, 5)
        local opts = table.concat(got[1].mail_options or {}, " ")
        assert.matches("SMTPUTF8", opts, 1, true)
        assert.matches("BODY=8BITMIME", opts, 1, true)
      end)
    end
  end)

  describe("server text (item 3)", function()
    it("escapes control characters of a server's reply in the error", function()
      local h = servers.hostile(script("250 mx\r\n", { expect = "MAIL" }, { send = "250 ok\r\n" },
        { expect = "RCPT" }, { send = "550 5.1.1 \27]0;owned\7 no \27[2J such user\r\n" },
        { expect = "QUIT" }, { send = "221 bye\r\n" }))
      local c = assert(connect(h))
      local r, err = c:send(base())
      assert.is_nil(r)
      assert.are.equal("smtp", err.kind)
      assert.is_true(no_controls(err.message), err.message)
      assert.is_true(no_controls(tostring(err)))
      assert.matches("\\x1b]0;owned\\x07 no \\x1b[2J such user", tostring(err), 1, true)
      c:close()
      h:wait(5)
    end)
  end)
end)
end

describe("input rules (messages and the outbox)", function()
  describe("error texts (item 3)", function()
    it("are one line, with control characters escaped in field and message", function()
      local m, err = mailer.message(base { headers = { ["X-A\r\nBcc: victim@example.com"] = "v" } })
      assert.is_nil(m)
      assert.are.equal("input", err.kind)
      assert.is_true(no_controls(err.field), err.field)
      assert.is_true(no_controls(err.message), err.message)
      local s = tostring(err)
      assert.is_true(no_controls(s), s)
      assert.matches("X-A\\r\\nBcc: victim@example.com", s, 1, true)
      m, err = mailer.message(base { to = "b@example.com\0\27[31m" })
      assert.is_nil(m)
      assert.is_true(no_controls(tostring(err)))
    end)

    it("escapes C0, DEL and C1 controls in error objects made from Lua, keeping UTF-8 text", function()
      local e = core.error { kind = "smtp", field = "to[1]\n", message = "Grüße \27[31mred\127\r\n\194\155x" }
      local s = tostring(e)
      assert.is_true(no_controls(s))
      assert.is_nil(s:find("\194[\128-\159]"))
      assert.are.equal("smtp error: Grüße \\x1b[31mred\\x7f\\r\\n\\u009bx", s)
      assert.are.equal("to[1]\\n", e.field)
      -- fields changed after creation are escaped by tostring too
      e.message = "a\nb"
      assert.are.equal("smtp error: a\\nb", tostring(e))
      -- bytes that are not UTF-8 are shown as \xHH
      e.message = "x\255\155y"
      assert.are.equal("smtp error: x\\xff\\x9by", tostring(e))
    end)
  end)

  describe("the envelope with the outbox (item 1)", function()
    it("is checked the same way", function()
      local dir = servers.mkdir("outbox")
      local r, err = mailer.send(base(), { outbox = dir }, { envelope = { from = "a@example.com\0@evil.test" } })
      assert.is_nil(r)
      assert.are.equal("input", err.kind)
      assert.are.equal("envelope.from", err.field)
      r, err = mailer.send(base(), { outbox = dir }, { envelope = { to = { "x@example.com\r\n" } } })
      assert.is_nil(r)
      assert.are.equal("envelope.to[1]", err.field)
      r = assert(mailer.send(base(), { outbox = dir }, { envelope = { to = { "x@bücher.de" } } }))
      assert.are.same({ "x@xn--bcher-kva.de" }, r.accepted)
    end)
  end)

  describe("quoted local parts (item 6)", function()
    it("refuses quoted local parts with spaces, brackets, '=' or other specials", function()
      for _, a in ipairs {
        '"x> NOTIFY=SUCCESS ORCPT=rfc822;spy@evil.test"@d.test',
        '"john doe"@example.com', '"a=b"@example.com', '"a<b"@example.com', '"a>b"@example.com',
        '"a\\"b"@example.com', '"a\\\\b"@example.com', '"a,b"@example.com', '"a:b"@example.com',
        '"@evil.test:x"@example.com', '"a(b)"@example.com', '"a[b]"@example.com', '"a;b"@example.com',
      } do
        for _, role in ipairs { "to", "from", "cc", "bcc", "reply_to" } do
          local m, err = mailer.message(base { [role] = a })
          assert.is_nil(m, a)
          assert.are.equal("input", err.kind)
          assert.are.equal(role, err.field)
          assert.matches("quoted local part", err.message)
        end
        local m, err = mailer.message(base { to = { { name = "X", address = a } } })
        assert.is_nil(m)
        assert.are.equal("to[1]", err.field)
      end
    end)

    it("still accepts quotes around what a dot-string cannot hold: dots in odd places", function()
      local m = assert(mailer.message(base { to = '"a..b."@example.com' }))
      local _, rcpts = m:envelope()
      assert.are.same({ '"a..b."@example.com' }, rcpts)
    end)
  end)

  describe("content types (item 7)", function()
    local function ct_of(ct, filename)
      local m, err = mailer.message(base { attachments = { { data = "x", filename = filename, content_type = ct } } })
      if not m then return nil, err end
      for block in m:render():gmatch("\r\n%-%-[^\r\n]*\r\n(.-)\r\n\r\n") do
        local unfolded = block:gsub("\r\n[ \t]+", " ")
        if unfolded:find("Content-Disposition: attachment", 1, true) then
          return unfolded:match("Content%-Type: [^\r]*")
        end
      end
      error("no attachment part")
    end

    it("refuses parameters it cannot write back unambiguously", function()
      for _, ct in ipairs {
        "text/plain; name=evil.exe", "text/plain; NAME=\"evil.exe\"", "text/plain; name*=utf-8''evil.exe",
        "text/plain; x=\"unbalanced", "text/plain; charset=utf-8; Charset=latin1", "text/plain; charset",
        "text/plain; a=b c", "text/plain; x=é", "text/plain; =x", "text/plain;; x=y", "text/plain; x=\"a\"b",
        "text/plain (comment)", "text /plain", "text/", "/plain", "text/pl/ain", "multipart/mixed; boundary=x",
        "text/plain; x=y;", "text/plain\t; x=\"\1\"",
      } do
        local m, err = ct_of(ct, "a.txt")
        assert.is_nil(m, ct)
        assert.are.equal("input", err.kind)
        assert.are.equal("attachments[1]", err.field)
        assert.matches("content_type", err.message)
      end
    end)

    it("writes type, subtype and parameters back, quoting where needed", function()
      assert.are.equal('Content-Type: text/plain; charset=UTF-8; format=flowed; name="a.txt"',
        ct_of("text/plain;charset=UTF-8;  format=flowed ", "a.txt"))
      assert.are.equal('Content-Type: text/plain; charset=us-ascii; name="a.txt"',
        ct_of('text/plain; charset="us-ascii"', "a.txt"))
      assert.are.equal('Content-Type: application/x-thing; title="a \\"b\\" c; d=e"',
        ct_of('application/x-thing; title="a \\"b\\" c; d=e"'))
      assert.are.equal('Content-Type: application/pdf; x=""', ct_of('application/pdf; x=""'))
      assert.are.equal("Content-Type: image/png", ct_of("image/png"))
    end)
  end)

  describe("the DKIM spool file (item 9)", function()
    it("is not inherited by child processes (O_CLOEXEC)", function()
      local key = [[
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPTecfiHl0iQEw6xVfVvSC7uO9sly4CaTg9QkExekxzV
-----END PRIVATE KEY-----
]]
      local calls, listing = 0, nil
      local m = assert(mailer.message(base {
        dkim = { domain = "example.com", selector = "s", key = key },
        attachments = { { filename = "a.bin", source = function()
          calls = calls + 1
          if calls == 1 then return ("x"):rep(1000) end
          if calls == 2 then
            local p = io.popen("env -u LD_PRELOAD ls -l /proc/self/fd/ 2>&1")
            listing = p:read("*a")
            p:close()
          end
          return nil
        end } },
      }))
      assert.truthy(m:render())
      assert.is_string(listing)
      assert.matches(" %d+ %-> ", listing)   -- ls saw its descriptors
      assert.is_nil(listing:find("mailer%-dkim"), listing)
    end)
  end)
end)

describe("the mailer command (item 8)", function()
  local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS LUA_PATH='lua/?.lua;;' LUA_CPATH='" .. compat.build_cpath .. "' "
  local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
  local function run(args)
    local out, err = os.tmpname(), os.tmpname()
    local cmd = ENV .. compat.lua .. " bin/mailer"
    for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
    local _, how, code = compat.execute(cmd .. " >" .. out .. " 2>" .. err)
    local function slurp(n)
      local f = io.open(n, "rb")
      local s = f:read("*a")
      f:close()
      os.remove(n)
      return s
    end
    return how == "exit" and code or 128 + code, slurp(out), slurp(err)
  end
  teardown(function() servers.stop_all() end)

  it("escapes the server's text for the terminal in the trace, rejections and the receipt", function()
    local s = servers.aiosmtpd {
      reject_rcpt = { ["nobody@example.com"] = "550 5.1.1 \27[31mno such user\27[0m\7" },
      data_reply = "250 2.0.0 \27]0;owned\7queued \27[2J\194\155" }
    local code, out, err = run { "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--to", "nobody@example.com", "--text", "hi", "--server", "smtp://127.0.0.1:" .. s.port,
      "--security", "none", "--trace" }
    assert.are.equal(67, code, err)   -- (sent to one recipient, refused for the other)
    assert.is_true(no_controls((out:gsub("\n", ""))), out)
    assert.is_true(no_controls((err:gsub("\n", ""))), err)
    assert.is_nil((out .. err):find("\194[\128-\159]"))
    assert.matches("\\x1b[31mno such user\\x1b[0m\\x07", err, 1, true)
    assert.matches("\\x1b]0;owned\\x07queued \\x1b[2J\\u009b", out, 1, true)
    assert.matches("S: 250 2.0.0 \\x1b]0;owned", err, 1, true)
  end)

  it("refuses a --timeout over one day", function()
    local code, _, err = run { "send", "--from", "a@example.com", "--to", "b@example.com", "--text", "x",
      "--server", "smtp://127.0.0.1:1", "--timeout", "1e16" }
    assert.are.equal(64, code)
    assert.matches("timeout", err)
  end)
end)
