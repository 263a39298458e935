-- Sending to a real SMTP server (python3-aiosmtpd started by the spec
-- helpers on 127.0.0.1): plain, STARTTLS and implicit TLS with a throwaway
-- CA, AUTH, receipts, send_many, trace and progress callbacks, and every
-- delivered message parsed by Python's email and compared with what was
-- rendered.
local mailer = require "mailer"
local servers = require "support.servers"
local mime = require "support.mime"
local compat = require "support.compat"
local transports = require "support.transports"

local function msg_table(t)
  local m = { from = "alice@example.com", to = { "bob@example.com", "carol@example.com" },
              subject = "Grüße über SMTP", text = "Hello\n.\nA line with a dot, and\r\nmixed\rline ends.\n" }
  for k, v in pairs(t or {}) do m[k] = v end
  return m
end

-- The data a server recorded must be exactly the rendered message.
local function assert_delivered(rec, msg)
  local raw = assert(msg:render())
  assert.are.equal(#raw, #rec.data)
  assert.is_true(raw == rec.data, "delivered bytes differ from the rendered message")
  local p = mime.parse_many({ rec.data })[1]
  assert.is_table(p)
  return p
end

-- The same spec bodies run over the C transport and over the cosocket
-- driver (the loop body keeps its old indentation).
for _, tr in ipairs(transports.list()) do
describe("smtp against aiosmtpd (" .. tr.name .. ")", function()
  local ca
  setup(function() ca = servers.ca() end)
  teardown(function() servers.stop_all() end)

  it("sends over plain SMTP and returns a receipt", function()
    local s = servers.aiosmtpd {}
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none", helo = "client.test" })
    assert.is_table(conn.capabilities)
    assert.is_number(conn.capabilities.SIZE)
    local msg = assert(mailer.message(msg_table()))
    local receipt, err = conn:send(msg)
    assert.is_nil(err)
    assert.are.equal(250, receipt.code)
    assert.are.same({ "bob@example.com", "carol@example.com" }, receipt.accepted)
    assert.are.same({}, receipt.rejected)
    assert.is_string(receipt.message)
    assert.are.equal(msg:header("Message-ID"), receipt.message_id)
    conn:close()
    local got = s:wait_messages(1, 5)
    assert.are.equal(1, #got)
    assert.are.equal("alice@example.com", got[1].mail_from)
    assert.are.same({ "bob@example.com", "carol@example.com" }, got[1].rcpt_tos)
    local p = assert_delivered(got[1], msg)
    assert.are.equal("Grüße über SMTP", p.subject)
    -- the Message-ID the receipt gives is the one the recipient sees
    assert.matches("^<[^<>@]+@example%.com>$", receipt.message_id)
    assert.are.equal(receipt.message_id, p.headers["message-id"][1])
  end)

  it("uses STARTTLS with a verified certificate and authenticates", function()
    local s = servers.aiosmtpd { tls = "starttls", cert = "good", auth = { user = "u", password = "p w" },
                                 auth_require_tls = true }
    local lines = {}
    local conn, err = tr.connect { host = "localhost", port = s.port, security = "starttls",
      username = "u", password = "p w", tls = { cafile = s.cafile or ca.cafile },
      trace = function(dir, line) lines[#lines + 1] = dir .. ": " .. line end }
    assert.is_nil(err)
    assert.is_true(conn.tls)
    local msg = assert(mailer.message(msg_table { to = "dave@example.com" }))
    local receipt = assert(conn:send(msg))
    assert.are.equal(250, receipt.code)
    conn:close()
    local got = s:wait_messages(1, 5)
    assert_delivered(got[1], msg)
    local trace = table.concat(lines, "\n")
    assert.matches("C: STARTTLS", trace, 1, true)
    assert.matches("C: AUTH [%u%d-]+", trace)
    assert.matches("C: <redacted>", trace, 1, true)
    assert.is_nil(trace:find("cCB3", 1, true))       -- no base64 of the password
    assert.is_nil(trace:find("p w", 1, true))
    local ehlos = select(2, trace:gsub("C: EHLO", ""))
    assert.are.equal(2, ehlos)                        -- EHLO again after TLS
  end)

  for _, mech in ipairs { "plain", "login" } do
    it("authenticates with AUTH " .. mech .. " over implicit TLS", function()
      local s = servers.aiosmtpd { tls = "implicit", cert = "good", auth = { user = "user", password = "secret" } }
      local conn, err = tr.connect { host = "localhost", port = s.port, security = "tls",
        username = "user", password = "secret", auth = mech, tls = { cafile = s.cafile or ca.cafile } }
      assert.is_nil(err)
      assert.is_truthy(conn)
      local msg = assert(mailer.message(msg_table()))
      assert(conn:send(msg))
      conn:close()
      local got = s:wait_messages(1, 5)
      assert_delivered(got[1], msg)
    end)
  end

  for _, mech in ipairs { "xoauth2", "oauthbearer" } do
    it("authenticates with AUTH " .. mech .. " and a token function", function()
      local s = servers.aiosmtpd { tls = "implicit", cert = "good", auth = { user = "user", password = "tok123" } }
      local calls, lines = 0, {}
      local conn, err = tr.connect { host = "localhost", port = s.port, security = "tls",
        username = "user", token = function() calls = calls + 1; return "tok123" end, auth = mech,
        tls = { cafile = s.cafile or ca.cafile },
        trace = function(dir, line) lines[#lines + 1] = line end }
      assert.is_nil(err)
      assert.are.equal(1, calls)
      assert(conn:send(assert(mailer.message(msg_table()))))
      conn:close()
      local got = s:wait_messages(1, 5)
      assert.are.equal(mech:upper(), got[1].auth_mechanism)
      assert.is_nil(table.concat(lines, "\n"):find("tok123", 1, true))
    end)
  end

  it("reports a wrong password as an auth error", function()
    local s = servers.aiosmtpd { tls = "implicit", cert = "good", auth = { user = "user", password = "secret" } }
    local conn, err = tr.connect { host = "localhost", port = s.port, security = "tls",
      username = "user", password = "wrong", auth = "plain", tls = { cafile = s.cafile or ca.cafile } }
    assert.is_nil(conn)
    assert.are.equal("auth", err.kind)
    assert.are.equal(535, err.code)
    assert.is_nil(tostring(err):find("wrong", 1, true))
  end)

  it("sends many messages over one connection with send_many", function()
    local s = servers.aiosmtpd {}
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local list, msgs = {}, {}
    for i = 1, 5 do
      msgs[i] = assert(mailer.message(msg_table { subject = "n" .. i, to = "r" .. i .. "@example.com" }))
      list[i] = msgs[i]
    end
    list[6] = { from = "not an address", to = "x@example.com", subject = "bad", text = "x" }
    local results = conn:send_many(list)
    assert.are.equal(6, #results)
    for i = 1, 5 do
      assert.are.equal(250, results[i].code)
      assert.are.equal(msgs[i]:header("Message-ID"), results[i].message_id)
    end
    assert.are.equal("input", results[6].error.kind)
    -- iterator form, reusing the connection
    local i = 0
    local r2 = conn:send_many(function() i = i + 1; if i <= 2 then return msgs[i] end end)
    assert.are.equal(2, #r2)
    conn:close()
    local got = s:wait_messages(7, 5)
    assert.are.equal(7, #got)
    for k = 1, 5 do assert_delivered(got[k], msgs[k]) end
    assert.are.equal(1, s:connections())
  end)

  it("reports progress and honours an explicit envelope", function()
    local s = servers.aiosmtpd {}
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local big = string.rep("0123456789abcdef", 65536)   -- 1 MiB attachment
    local msg = assert(mailer.message(msg_table { attachments = { { data = big, filename = "big.bin" } } }))
    local calls, last, total = 0, 0, nil
    local receipt = assert(conn:send(msg, {
      envelope = { from = "bounce@example.com", to = { "other@example.com" } },
      progress = function(sent, t) calls = calls + 1; assert.is_true(sent >= last); last = sent; total = t end }))
    assert.are.same({ "other@example.com" }, receipt.accepted)
    assert.is_true(calls >= 2)
    assert.are.equal(#assert(msg:render()), last)
    if total then assert.are.equal(last, total) end
    conn:close()
    local got = s:wait_messages(1, 5)
    assert.are.equal("bounce@example.com", got[1].mail_from)
    assert.are.same({ "other@example.com" }, got[1].rcpt_tos)
    assert_delivered(got[1], msg)
  end)

  it("uses SMTPUTF8 for non-ASCII addresses when offered", function()
    local s = servers.aiosmtpd { smtputf8 = true }
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local msg, merr = mailer.message(msg_table { to = "jörg@exämple.com" })
    assert(msg, tostring(merr))
    local receipt, err = conn:send(msg)
    assert.is_nil(err)
    assert.are.equal(250, receipt.code)
    conn:close()
    local got = s:wait_messages(1, 5)
    local opts = table.concat(got[1].mail_options or {}, " ")
    assert.matches("SMTPUTF8", opts, 1, true)
  end)

  it("refuses a message larger than the advertised SIZE before MAIL", function()
    local s = servers.aiosmtpd { size = 1000 }
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local msg = assert(mailer.message(msg_table { text = string.rep("x", 5000) }))
    local r, err = conn:send(msg)
    assert.is_nil(r)
    assert.are.equal("smtp", err.kind)
    assert.matches("SIZE", err.message)
    assert.is_true(conn:noop())   -- the connection is still usable
    conn:close()
  end)

  it("mailer.send connects, sends and quits", function()
    local s = servers.aiosmtpd {}
    local receipt, err = tr.send(msg_table { message_id = "<given.1@example.com>" },
                                 { host = s.host, port = s.port, security = "none" })
    assert.is_nil(err)
    assert.are.equal(250, receipt.code)
    assert.are.equal("<given.1@example.com>", receipt.message_id)
    assert.are.equal(1, #s:wait_messages(1, 5))
    -- the outbox receipt carries it too
    local dir = servers.mkdir("outbox-receipt")
    local m = assert(mailer.message(msg_table()))
    local r = assert(tr.send(m, { outbox = dir }))
    assert.are.equal(m:header("Message-ID"), r.message_id)
    local f = assert(io.open(r.path, "rb"))
    assert.matches("\r\nMessage%-ID: " .. r.message_id:gsub("%p", "%%%0") .. "\r\n", f:read("*a"))
    f:close()
  end)

  it("closes idempotently; use after close raises; __close works", function()
    local s = servers.aiosmtpd {}
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    assert.is_true(conn:noop())
    assert.is_true(conn:reset())
    conn:close()
    conn:close()
    assert.has_error(function() conn:noop() end, "attempt to use a closed connection")
    if compat.has_close then   -- `local x <close>` is Lua 5.4 syntax
      local chunk = assert(compat.load([[
        local tr, s = ...
        do
          local c <close> = assert(tr.connect { host = s.host, port = s.port, security = "none" })
          assert(c:noop())
        end
      ]], "close scope"))
      chunk(tr, s)
    end
    assert.matches("open", tostring(assert(tr.connect { host = s.host, port = s.port, security = "none" })))
  end)

  it("raises errors from the trace callback after closing the connection", function()
    local s = servers.aiosmtpd {}
    local ok, e = pcall(tr.connect, { host = s.host, port = s.port, security = "none",
      trace = function(dir) if dir == "S" then error("boom from trace") end end })
    assert.is_false(ok)
    assert.matches("boom from trace", tostring(e))
    local conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    -- a progress error before the whole message went out: raised, and the
    -- connection is closed half way, so nothing is delivered
    local big = assert(mailer.message(msg_table { attachments = { { data = ("b"):rep(4000000), filename = "b" } } }))
    ok, e = pcall(conn.send, conn, big, { progress = function() error("stop") end })
    assert.is_false(ok)
    assert.matches("stop", tostring(e))
    local r, err = conn:send(big)
    assert.is_nil(r)
    assert.are.equal("network", err.kind)
    conn:close()
    assert.are.equal(0, #s:wait_messages(1, 1))
    -- a progress error once the server has the whole message: the receipt,
    -- with the error beside it, and the connection goes on
    conn = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local small = assert(mailer.message(msg_table()))
    r = assert(conn:send(small, { progress = function(sent, total)
      if sent == total then error("late") end
    end }))
    assert.matches("late", tostring(r.callback_error))
    assert.truthy(conn:send(small))
    conn:close()
    assert.are.equal(2, #s:wait_messages(2, 5))
  end)

  it("misuse raises, bad values return input errors", function()
    assert.has_error(function() tr.connect("x") end)
    assert.has_error(function() tr.connect { host = 1 } end)
    assert.has_error(function() tr.connect { host = "h", bogus = true } end)
    local c, err = tr.connect { host = "h", security = "maybe" }
    assert.is_nil(c)
    assert.are.equal("input", err.kind)
    c, err = tr.connect { host = "h", port = 70000 }
    assert.are.equal("input", err.kind)
    c, err = tr.connect { host = "h", helo = "x\r\nMAIL FROM:<a>" }
    assert.are.equal("input", err.kind)
    c, err = tr.connect { host = "127.0.0.1", port = 1, security = "none", timeout = 2 }
    assert.is_nil(c)
    assert.are.equal("network", err.kind)
    assert.is_true(err.temporary)
  end)
end)
end

describe("option mistakes", function()
  local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", text = "x" })

  -- The error a call raises (it must raise).
  local function raised(f)
    local ok, e = pcall(f)
    assert.is_false(ok, "no error raised")
    return tostring(e)
  end

  it("name the function the caller called, the argument and the option, where it was called", function()
    local e = raised(function() mailer.send(m, { hots = "smtp.example.com" }) end)
    assert.matches("^[^:]*smtp_send_spec%.lua:%d+: bad argument #2 to 'send' " ..
                   "%(unknown option 'hots'; did you mean 'host'%?%)$", e)
    e = raised(function() mailer.connect { hots = "smtp.example.com" } end)
    assert.matches("^[^:]*smtp_send_spec%.lua:%d+: bad argument #1 to 'connect' %(unknown option 'hots'", e)
    e = raised(function() mailer.send(m, { host = "h", port = "25" }) end)
    assert.matches("smtp_send_spec%.lua:%d+: bad argument #2 to 'send' %(port: number expected, got string%)$", e)
    -- send options: argument #3 of mailer.send, raised before connecting
    e = raised(function() mailer.send(m, { host = "h" }, { progres = function() end }) end)
    assert.matches("smtp_send_spec%.lua:%d+: bad argument #3 to 'send' " ..
                   "%(unknown option 'progres'; did you mean 'progress'%?%)$", e)
    e = raised(function() mailer.send(m, { host = "h" }, { envelope = { from = 1 } }) end)
    assert.matches("bad argument #3 to 'send' (envelope.from: string expected, got number)", e, 1, true)
  end)

  it("suggest the nearest option, or list them all", function()
    local cases = {
      { { host = "h", pasword = "x" }, "did you mean 'password'?" },
      { { host = "h", user = "ann" }, "did you mean 'username'?" },
      { { host = "h", secure = true }, "did you mean 'security'?" },
      { { host = "h", timout = 5 }, "did you mean 'timeout'?" },
      { { host = "h", Port = 25 }, "did you mean 'port'?" },
      { { host = "h", tls = { verfy = false } }, "(tls: unknown option 'verfy'; did you mean 'verify'?)" },
      { { host = "h", tls = { ca = "x.pem" } }, "did you mean 'cafile'?" },
    }
    for _, c in ipairs(cases) do
      assert.matches(c[2], raised(function() mailer.connect(c[1]) end), 1, true)
    end
    local e = raised(function() mailer.connect { host = "h", zzzzzz = 1 } end)
    assert.matches("(unknown option 'zzzzzz'; the options are allow_plaintext_auth, auth, chunking, ", e, 1, true)
  end)
end)
