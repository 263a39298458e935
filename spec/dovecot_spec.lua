-- SASL against a real server side: Dovecot's submission service (Debian's
-- dovecot-core + dovecot-submissiond), started by the spec helpers on
-- 127.0.0.1 with a throwaway configuration, relaying what it accepts to a
-- recording aiosmtpd. SCRAM-SHA-256 (the server's signature checked), a
-- wrong password, PLAIN and LOGIN, all over STARTTLS.
local mailer = require "mailer"
local servers = require "support.servers"
local transports = require "support.transports"

local ok, why = servers.have_dovecot()
local dit = ok and it or function(name) pending(name .. " (" .. why .. ")") end

-- a non-ASCII password (NFC) exercises SASLprep on both sides
local USER, PASSWORD = "alice", "s3cret pässwörd"

for _, tr in ipairs(transports.list()) do
describe("AUTH against Dovecot (" .. tr.name .. ")", function()
  local relay, dove
  setup(function()
    if not ok then return end
    relay = servers.aiosmtpd {}
    dove = servers.dovecot { users = { [USER] = PASSWORD }, relay_port = relay.port }
  end)
  teardown(function() servers.stop_all() end)

  local function connect(t)
    local o = { host = "localhost", port = dove.port, security = "starttls", timeout = 10,
                tls = { cafile = dove.cafile }, username = USER, password = PASSWORD }
    for k, v in pairs(t or {}) do o[k] = v end
    return tr.connect(o)
  end

  dit("logs in with SCRAM-SHA-256, checks Dovecot's signature, and sends", function()
    local lines = {}
    local conn, err = connect { auth = "scram-sha-256",
                                trace = function(dir, line) lines[#lines + 1] = dir .. ": " .. line end }
    assert.is_nil(err, err and tostring(err))
    local trace = table.concat(lines, "\n")
    assert.matches("C: AUTH SCRAM-SHA-256", trace, 1, true)
    assert.matches("S: 235", trace, 1, true)
    assert.is_nil(trace:find("pässwörd", 1, true))
    local before = #relay:messages()
    local r = assert(conn:send { from = "alice@example.com", to = "bob@example.com",
                                 subject = "SCRAM", text = "via Dovecot" })
    assert.are.equal(250, r.code)
    conn:close()
    local got = relay:wait_messages(before + 1, 10)
    assert.are.equal("alice@example.com", got[before + 1].mail_from)
    assert.matches("method=SCRAM%-SHA%-256", dove:log())
  end)

  dit("chooses SCRAM-SHA-256 by itself as the strongest mechanism offered", function()
    local lines = {}
    local conn = assert(connect { trace = function(dir, line) lines[#lines + 1] = dir .. ": " .. line end })
    conn:close()
    assert.matches("C: AUTH SCRAM-SHA-256", table.concat(lines, "\n"), 1, true)
  end)

  for _, mech in ipairs { "scram-sha-256", "plain", "login" } do
    dit("reports a wrong password with " .. mech .. " as kind \"auth\"", function()
      local conn, err = connect { auth = mech, password = "wrong password" }
      assert.is_nil(conn)
      assert.are.equal("auth", err.kind)
      assert.are.equal(535, err.code)
      assert.is_false(err.temporary)
      assert.is_nil(tostring(err):find("wrong password", 1, true))
    end)
  end

  for _, mech in ipairs { "plain", "login" } do
    dit("logs in with " .. mech:upper() .. " over STARTTLS and sends", function()
      local conn, err = connect { auth = mech }
      assert.is_nil(err, err and tostring(err))
      assert.is_true(conn.tls)
      local before = #relay:messages()
      assert(conn:send { from = "alice@example.com", to = "carol@example.com", subject = mech, text = "x" })
      conn:close()
      local got = relay:wait_messages(before + 1, 10)
      assert.are.same({ "carol@example.com" }, got[before + 1].rcpt_tos)
      assert.matches("method=" .. mech:upper(), dove:log())
    end)
  end

  dit("never sends the password without TLS", function()
    local conn, err = connect { security = "none", auth = "plain" }
    assert.is_nil(conn)
    assert.are.equal("auth", err.kind)
    assert.matches("unencrypted", err.message)
  end)
end)
end
