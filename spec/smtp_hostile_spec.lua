-- Hostile and broken SMTP servers (spec helpers' scripted server on
-- 127.0.0.1): STARTTLS stripping, refusal and response injection, bad
-- certificates, overlong/endless replies, slow servers, drops, 421 at each
-- step, rejected recipients, a SASL loop. Each test checks the error and
-- what the client put on the wire.
local mailer = require "mailer"
local servers = require "support.servers"
local compat = require "support.compat"
local transports = require "support.transports"

local GREET = { send = "220 mx.test ESMTP\r\n" }
local function ehlo(caps) return { { expect = "EHLO" }, { send = caps } } end

-- Script = greeting, EHLO + caps, then the rest.
local function script(caps, ...)
  local s = { GREET }
  for _, st in ipairs(ehlo(caps)) do s[#s + 1] = st end
  for _, st in ipairs { ... } do s[#s + 1] = st end
  return s
end

local function msg()
  return assert(mailer.message { from = "a@example.com", to = { "b@example.com", "c@example.com" },
                                 subject = "s", text = "body" })
end

local function connect_with(tr, h, t)
  local o = { host = "127.0.0.1", port = h.port, security = "none", timeout = 5, helo = "client.test" }
  for k, v in pairs(t or {}) do o[k] = v end
  return tr.connect(o)
end

-- The same spec bodies run over the C transport and over the cosocket
-- driver (the loop body keeps its old indentation).
for _, tr in ipairs(transports.list()) do
local function connect(h, t) return connect_with(tr, h, t) end

describe("smtp against hostile servers (" .. tr.name .. ")", function()
  local ca
  setup(function() ca = servers.ca() end)
  teardown(function() servers.stop_all() end)

  describe("STARTTLS", function()
    it("fails when STARTTLS is not offered, sending only EHLO and QUIT", function()
      local h = servers.hostile(script("250-mx\r\n250 AUTH PLAIN LOGIN\r\n", { read_all = true }))
      local c, err = connect(h, { security = "starttls", username = "u", password = "p" })
      assert.is_nil(c)
      assert.are.equal("tls", err.kind)
      -- and names the choices, as the AUTH error does
      assert.matches('does not offer STARTTLS, and security = "starttls" requires it', err.message, 1, true)
      assert.matches('security = "starttls-optional" goes on in clear text', err.message, 1, true)
      assert.matches('security = "none" never uses TLS', err.message, 1, true)
      h:wait(5)
      assert.are.equal("EHLO client.test\r\nQUIT\r\n", h:received())
    end)

    it("names allow_plaintext_auth when it refuses AUTH without TLS", function()
      local h = servers.hostile(script("250-mx\r\n250 AUTH PLAIN LOGIN\r\n", { read_all = true }))
      local c, err = connect(h, { security = "none", username = "u", password = "p" })
      assert.is_nil(c)
      assert.are.equal("auth", err.kind)
      assert.matches("(use TLS, or allow_plaintext_auth = true to send them in clear text)", err.message, 1, true)
      h:wait(5)
      assert.are.equal("EHLO client.test\r\nQUIT\r\n", h:received())
    end)

    for _, code in ipairs { "454 4.7.0 TLS not available", "502 5.5.1 no", "501 5.5.4 syntax" } do
      it("fails when STARTTLS is refused (" .. code:sub(1, 3) .. ") and sends nothing in clear", function()
        local h = servers.hostile(script("250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n",
          { expect = "STARTTLS" }, { send = code .. "\r\n" }, { read_all = true }))
        local c, err = connect(h, { security = "starttls", username = "u", password = "p" })
        assert.is_nil(c)
        assert.are.equal("tls", err.kind)
        assert.are.equal(tonumber(code:sub(1, 3)), err.code)
        h:wait(5)
        local wire = h:received()
        assert.is_nil(wire:find("AUTH", 1, true))
        assert.is_nil(wire:find("MAIL", 1, true))
      end)
    end

    for _, reply in ipairs { "250 OK", "354 go ahead" } do
      it("treats '" .. reply .. "' to STARTTLS as failure", function()
        local h = servers.hostile(script("250-mx\r\n250 STARTTLS\r\n",
          { expect = "STARTTLS" }, { send = reply .. "\r\n" }, { read_all = true }))
        local c, err = connect(h, { security = "starttls" })
        assert.is_nil(c)
        assert.are.equal("tls", err.kind)
        h:wait(5)
        assert.are.equal("EHLO client.test\r\nSTARTTLS\r\n", h:received())
      end)
    end

    it("aborts on bytes injected after the 220 (response injection)", function()
      local h = servers.hostile(script("250-mx\r\n250 STARTTLS\r\n",
        { expect = "STARTTLS" }, { send = "220 Ready\r\n250-x\r\n250 AUTH PLAIN LOGIN\r\n" },
        { tls = "good" }, { read_all = true }))
      local c, err = connect(h, { security = "starttls", tls = { cafile = h.cafile or ca.cafile } })
      assert.is_nil(c)
      assert.are.equal("protocol", err.kind)
      assert.matches("injection", err.message)
    end)

    it("forgets tampered capabilities after TLS and never sends STARTTLS twice", function()
      local h = servers.hostile(script("250-mx\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 10\r\n250 STARTTLS\r\n",
        { expect = "STARTTLS" }, { send = "220 go\r\n" }, { tls = "good" },
        { expect = "EHLO" }, { send = "250-mx\r\n250-SIZE 100000\r\n250 STARTTLS\r\n" },
        { expect = "QUIT" }, { send = "221 bye\r\n" }, { read_all = true }))
      local c, err = connect(h, { host = "localhost", security = "starttls",
                                  tls = { cafile = h.cafile or ca.cafile } })
      assert.is_nil(err)
      assert.are.equal(100000, c.capabilities.SIZE)
      assert.is_nil(c.capabilities.AUTH)
      c:close()
      h:wait(5)
      local _, n = h:received():gsub("STARTTLS", "")
      assert.are.equal(1, n)
    end)

    it("does not fall back to HELO while STARTTLS is required", function()
      local h = servers.hostile { GREET, { expect = "EHLO" }, { send = "500 no EHLO\r\n" }, { read_all = true } }
      local c, err = connect(h, { security = "starttls" })
      assert.is_nil(c)
      assert.are.equal("tls", err.kind)
      h:wait(5)
      assert.is_nil(h:received():find("HELO", 1, true))
    end)

    it("falls back to HELO without TLS", function()
      local h = servers.hostile { GREET, { expect = "EHLO" }, { send = "502 no EHLO\r\n" },
        { expect = "HELO" }, { send = "250 hello\r\n" }, { expect = "QUIT" }, { send = "221 bye\r\n" } }
      local c = assert(connect(h))
      c:close()
    end)
  end)

  describe("certificates", function()
    for _, case in ipairs {
      { cert = "wrong-host", pattern = "host name mismatch" },
      { cert = "expired", pattern = "expired" },
      { cert = "self-signed", pattern = "self%-signed" },
    } do
      it("rejects a " .. case.cert .. " certificate with implicit TLS", function()
        local s = servers.aiosmtpd { tls = "implicit", cert = case.cert }
        local c, err = tr.connect { host = "localhost", port = s.port, security = "tls", timeout = 5,
                                        tls = { cafile = s.cafile or ca.cafile } }
        assert.is_nil(c)
        assert.are.equal("tls", err.kind)
        assert.matches(case.pattern, err.message)
      end)

      it("rejects a " .. case.cert .. " certificate with STARTTLS, before AUTH", function()
        local h = servers.hostile(script("250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n",
          { expect = "STARTTLS" }, { send = "220 go\r\n" }, { tls = case.cert }, { read_all = true }))
        local c, err = connect(h, { host = "localhost", security = "starttls", username = "u", password = "p",
                                    tls = { cafile = h.cafile or ca.cafile } })
        assert.is_nil(c)
        assert.are.equal("tls", err.kind)
        assert.matches(case.pattern, err.message)
        h:wait(5)
        assert.is_nil(h:received():find("AUTH", 1, true))
      end)
    end

    it("accepts a bad certificate only with tls.verify = false", function()
      local s = servers.aiosmtpd { tls = "implicit", cert = "self-signed" }
      local c, err = tr.connect { host = "localhost", port = s.port, security = "tls",
                                      tls = { verify = false } }
      assert.is_nil(err)
      c:close()
    end)
  end)

  describe("replies", function()
    it("stops an overlong reply line at the cap", function()
      local h = servers.hostile { { send = "220 " }, { flood = "x", bytes = 10 * 1024 * 1024 } }
      local c, err = connect(h)
      assert.is_nil(c)
      assert.are.equal("protocol", err.kind)
    end)

    it("stops an endless multi-line reply", function()
      local h = servers.hostile { GREET, { expect = "EHLO" }, { flood = "250-x\r\n", bytes = 10 * 1024 * 1024 } }
      local c, err = connect(h)
      assert.is_nil(c)
      assert.are.equal("protocol", err.kind)
    end)

    it("times out on a server trickling one byte a second (absolute deadline)", function()
      local h = servers.hostile { { trickle = "220 a very slow greeting indeed\r\n", interval = 1 } }
      local t0 = os.time()
      local c, err = connect(h, { timeout = 2 })
      assert.is_nil(c)
      assert.are.equal("timeout", err.kind)
      assert.matches("greeting", err.message)
      assert.is_true(os.time() - t0 <= 5)
    end)

    it("treats a reply without CRLF followed by EOF as a network error", function()
      local h = servers.hostile { { send = "220 OK" }, { close = true } }
      local c, err = connect(h)
      assert.is_nil(c)
      assert.are.equal("network", err.kind)
    end)

    it("cancels a 334 loop with *", function()
      local h = servers.hostile(script("250-mx\r\n250 AUTH LOGIN\r\n",
        { expect = "AUTH LOGIN" }, { send = "334 eHl6\r\n" }, { expect = "" }, { send = "334 eHl6\r\n" },
        { expect = "" }, { send = "334 eHl6\r\n" }, { expect = "*" }, { send = "501 cancelled\r\n" },
        { read_all = true }))
      local c, err = connect(h, { username = "u", password = "p", allow_plaintext_auth = true })
      assert.is_nil(c)
      assert.are.equal("auth", err.kind)
      h:wait(5)
      assert.matches("\r\n%*\r\n", h:received())
    end)
  end)

  describe("transactions", function()
    local caps = "250-mx\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"

    it("reports some rejected recipients in the receipt", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 2.1.0 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n" },
        { expect_data = true }, { send = "250 2.0.0 queued\r\n" }, { expect = "QUIT" }, { send = "221 bye\r\n" }))
      local c = assert(connect(h))
      local r, err = c:send(msg())
      assert.is_nil(err)
      assert.are.same({ "c@example.com" }, r.accepted)
      assert.are.equal(1, #r.rejected)
      assert.are.equal("b@example.com", r.rejected[1].address)
      assert.are.equal(550, r.rejected[1].code)
      assert.are.equal("5.1.1", r.rejected[1].enhanced)
      c:close()
    end)

    it("sends no message data when every recipient is rejected", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 ok\r\n550 5.1.1 no\r\n451 4.3.0 later\r\n554 5.5.1 no valid recipients\r\n" },
        { expect = "QUIT" }, { send = "221 bye\r\n" }, { read_all = true }))
      local c = assert(connect(h))
      local r, err = c:send(msg())
      assert.is_nil(r)
      assert.are.equal("smtp", err.kind)
      -- one refusal was only for now: the error is temporary, cites that
      -- one, and says that the other was not
      assert.are.same({ 451, "4.3.0", true }, { err.code, err.enhanced, err.temporary })
      assert.matches("all recipients were rejected, 1 of 2 only for now", err.message, 1, true)
      assert.are.equal(2, #err.rejected)
      assert.are.same({ "b@example.com", 550, false }, { err.rejected[1].address, err.rejected[1].code,
                                                          err.rejected[1].temporary })
      assert.are.same({ "c@example.com", 451, true }, { err.rejected[2].address, err.rejected[2].code,
                                                         err.rejected[2].temporary })
      c:close()
      h:wait(5)
      assert.is_nil(h:received():find("Subject", 1, true))
    end)

    it("reports every recipient refused for good as permanent, citing the first", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 ok\r\n550 5.1.1 no such user\r\n553 5.1.3 bad address\r\n554 5.5.1 no valid recipients\r\n" },
        { expect = "QUIT" }, { send = "221 bye\r\n" }, { read_all = true }))
      local c = assert(connect(h))
      local r, err = c:send(msg())
      assert.is_nil(r)
      assert.are.same({ 550, "5.1.1", false }, { err.code, err.enhanced, err.temporary })
      assert.matches("all recipients were rejected: 5.1.1 no such user", err.message, 1, true)
      c:close()
    end)

    it("takes enhanced codes the server did not announce, when their class agrees", function()
      -- no ENHANCEDSTATUSCODES in the EHLO reply, as aiosmtpd and many others
      local h = servers.hostile(script("250-mx\r\n250 PIPELINING\r\n",
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n451 5.0.0 class does not agree\r\n" ..
                 "354 go\r\n" },
        { expect_data = true }, { send = "250 2.0.0 queued\r\n" }, { expect = "QUIT" }, { send = "221 bye\r\n" }))
      local c = assert(connect(h))
      local m = assert(mailer.message { from = "a@example.com", to = { "b@example.com", "c@example.com", "d@example.com" },
                                        subject = "s", text = "body" })
      local r, err = c:send(m)
      assert.is_nil(err)
      assert.are.equal("2.0.0", r.enhanced)
      assert.are.same({ "b@example.com" }, r.accepted)
      assert.are.same({ "c@example.com", 550, "5.1.1" }, { r.rejected[1].address, r.rejected[1].code, r.rejected[1].enhanced })
      -- a 4xx reply whose text starts with 5.0.0 has no enhanced code (RFC 2034: they must agree)
      assert.are.same({ "d@example.com", 451 }, { r.rejected[2].address, r.rejected[2].code })
      assert.is_nil(r.rejected[2].enhanced)
      c:close()
    end)

    local steps421 = {
      greeting = { { send = "421 4.3.2 busy\r\n" } },
      EHLO = { GREET, { expect = "EHLO" }, { send = "421 4.3.2 busy\r\n" } },
    }
    for name, s in pairs(steps421) do
      it("reports 421 at " .. name .. " as a temporary failure", function()
        local h = servers.hostile(s)
        local c, err = connect(h)
        assert.is_nil(c)
        assert.are.equal("smtp", err.kind)
        assert.are.equal(421, err.code)
        assert.is_true(err.temporary)
      end)
    end

    it("reports 421 at STARTTLS and at AUTH as temporary failures", function()
      local h = servers.hostile(script("250-mx\r\n250 STARTTLS\r\n", { expect = "STARTTLS" },
                                       { send = "421 4.3.2 shutting down\r\n" }, { read_all = true }))
      local c, err = connect(h, { security = "starttls" })
      assert.is_nil(c)
      assert.are.equal(421, err.code)
      assert.is_true(err.temporary)
      h = servers.hostile(script("250-mx\r\n250 AUTH PLAIN\r\n", { expect = "AUTH" },
                                 { send = "421 4.3.2 shutting down\r\n" }, { read_all = true }))
      c, err = connect(h, { username = "u", password = "p", allow_plaintext_auth = true })
      assert.is_nil(c)
      assert.are.equal(421, err.code)
      assert.is_true(err.temporary)
      h:wait(5)
      assert.is_nil(h:received():find("QUIT", 1, true))   -- 421: close at once
    end)

    local nopipe = "250-mx\r\n250 8BITMIME\r\n"
    for _, case in ipairs {
      { "MAIL", { { expect = "MAIL" }, { send = "421 busy\r\n" } } },
      { "RCPT", { { expect = "MAIL" }, { send = "250 ok\r\n" }, { expect = "RCPT" }, { send = "421 busy\r\n" } } },
      { "DATA", { { expect = "MAIL" }, { send = "250 ok\r\n" }, { expect = "RCPT" }, { send = "250 ok\r\n" },
                  { expect = "RCPT" }, { send = "250 ok\r\n" }, { expect = "DATA" }, { send = "421 busy\r\n" } } },
      { "the final dot", { { expect = "MAIL" }, { send = "250 ok\r\n" }, { expect = "RCPT" }, { send = "250 ok\r\n" },
                  { expect = "RCPT" }, { send = "250 ok\r\n" }, { expect = "DATA" }, { send = "354 go\r\n" },
                  { expect_data = true }, { send = "421 busy\r\n" } } },
    } do
      it("reports 421 at " .. case[1] .. " as temporary and closes the connection", function()
        local s = script(nopipe, compat.unpack(case[2]))
        s[#s + 1] = { read_all = true }
        local h = servers.hostile(s)
        local c = assert(connect(h))
        local r, err = c:send(msg())
        assert.is_nil(r)
        assert.are.equal("smtp", err.kind)
        assert.are.equal(421, err.code)
        assert.is_true(err.temporary)
        local r2, err2 = c:send(msg())
        assert.is_nil(r2)
        assert.are.equal("network", err2.kind)
        c:close()
        h:wait(5)
        assert.is_nil(h:received():find("RSET", 1, true))
      end)
    end

    it("reports a drop mid-DATA as a temporary network error", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 ok\r\n250 ok\r\n354 go\r\n" }, { sleep = 0.2 }, { close = "reset" }))
      local c = assert(connect(h))
      local big = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "s",
        text = "x", attachments = { { data = string.rep("y", 8 * 1024 * 1024), filename = "y.bin" } } })
      local r, err = c:send(big)
      assert.is_nil(r)
      assert.are.equal("network", err.kind)
      assert.is_true(err.temporary)
      assert.is_nil(err.message:find("outcome unknown", 1, true))
      c:close()
    end)

    it("reports a drop after the final dot as 'outcome unknown', never success", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n" }, { expect_data = true }, { close = true }))
      local c = assert(connect(h))
      local r, err = c:send(msg())
      assert.is_nil(r)
      assert.are.equal("network", err.kind)
      assert.matches("outcome unknown", err.message)
      c:close()
    end)

    it("times out waiting for the reply to the final dot", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n" }, { expect_data = true }, { sleep = 4 }))
      local c = assert(connect(h, { timeout = 1 }))
      local r, err = c:send(msg())
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.matches("final dot", err.message)
      c:close()
    end)

    it("never puts a smuggled end-of-data on the wire", function()
      local h = servers.hostile(script(caps,
        { expect = "MAIL" }, { expect = "RCPT" }, { expect = "DATA" },
        { send = "250 ok\r\n250 ok\r\n354 go\r\n" }, { expect_data = true }, { send = "250 queued\r\n" },
        { expect = "QUIT" }, { send = "221 bye\r\n" }, { read_all = true }))
      local c = assert(connect(h))
      local body = "a\n.\nMAIL FROM:<x@y>\r\nb\r.\rc\r\n.\nd\n.\r\ne"
      local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "s", text = body })
      assert(c:send(m))
      c:close()
      h:wait(5)
      local wire = h:received()
      assert.is_nil(wire:find("[^\r]\n"))
      assert.is_nil(wire:find("\r[^\n]"))
      local _, dots = wire:gsub("\r\n%.\r\n", "")
      assert.are.equal(1, dots)
    end)
  end)

  describe("envelope injection", function()
    it("rejects CR/LF in envelope addresses before writing anything", function()
      local h = servers.hostile(script("250 mx\r\n", { expect = "QUIT" }, { send = "221 bye\r\n" },
                                       { read_all = true }))
      local c = assert(connect(h))
      local r, err = c:send(msg(), { envelope = { from = "a@b.com\r\nRCPT TO:<x@evil>", to = { "b@example.com" } } })
      assert.is_nil(r)
      assert.are.equal("input", err.kind)
      r, err = c:send(msg(), { envelope = { from = "a@b.com", to = { "b@example.com\0\r\nRSET" } } })
      assert.are.equal("input", err.kind)
      c:close()
      h:wait(5)
      assert.are.equal("EHLO client.test\r\nQUIT\r\n", h:received())
    end)
  end)
end)
end
