-- SCRAM-SHA-256 against aiosmtpd (spec/support/smtpd.py implements the
-- server side of RFC 5802 / RFC 7677 itself): chosen over PLAIN/LOGIN when
-- offered, a wrong password refused, and a server that cannot prove it
-- knows the password (wrong or missing server signature) is an "auth"
-- error even though it answers 235. The RFC 7677 test vector and the
-- engine's side are checked in tests/test_scram.c.
local mailer = require "mailer"
local servers = require "support.servers"

local USER, PASS = "scram-user", "pencil p\195\164ss"   -- "ä": a non-ASCII UTF-8 password

describe("SCRAM-SHA-256", function()
  local srv
  setup(function()
    srv = servers.aiosmtpd { auth = { user = USER, password = PASS }, auth_require_tls = false }
  end)
  teardown(function() servers.stop_all() end)

  local function connect(extra, s)
    local o = { host = "127.0.0.1", port = (s or srv).port, security = "none", timeout = 10,
                allow_plaintext_auth = true, username = USER, password = PASS }
    for k, v in pairs(extra or {}) do o[k] = v end
    return mailer.connect(o)
  end

  it("is chosen over PLAIN, LOGIN and CRAM-MD5 when offered, and sends", function()
    local lines = {}
    local conn = assert(connect { trace = function(d, l) lines[#lines + 1] = d .. " " .. l end })
    local offered = table.concat(conn.capabilities.AUTH, " ")
    assert.matches("SCRAM%-SHA%-256", offered)
    assert.matches("PLAIN", offered)
    local r = assert(conn:send { from = "a@example.com", to = "b@example.com", subject = "s", text = "x" })
    conn:close()
    assert.are.equal(250, r.code)
    local rec = srv:wait_messages(1)
    assert.are.equal("SCRAM-SHA-256", rec[#rec].auth_mechanism)
    assert.are.equal(USER, rec[#rec].auth)
    local transcript = table.concat(lines, "\n")
    assert.matches("C AUTH SCRAM%-SHA%-256 <redacted>", transcript)
    assert.is_nil(transcript:find("pencil", 1, true))
  end)

  it("works when asked for by name", function()
    local conn = assert(connect { auth = "scram-sha-256" })
    conn:close()
  end)

  it("refuses a wrong password with kind auth", function()
    local conn, err = connect { password = "wrong", auth = "scram-sha-256" }
    assert.is_nil(conn)
    assert.are.equal("auth", err.kind)
    assert.is_nil(tostring(err):find("wrong", 1, true) and tostring(err):find("pencil", 1, true))
  end)

  for _, fault in ipairs { "wrong_signature", "no_signature" } do
    it("treats a server with " .. fault:gsub("_", " ") .. " as an impostor, even after 235", function()
      local liar = servers.aiosmtpd { auth = { user = USER, password = PASS }, auth_require_tls = false,
                                        scram_fault = fault }
      local lines = {}
      local conn, err = connect({ trace = function(d, l) lines[#lines + 1] = d .. " " .. l end }, liar)
      assert.is_nil(conn)
      assert.are.equal("auth", err.kind)
      if fault == "wrong_signature" then
        assert.matches("signature is wrong", err.message)
        assert.matches("S 235", table.concat(lines, "\n"))   -- the server did say yes
      else
        assert.matches("without proving", err.message)
      end
      liar:stop()
    end)
  end
end)
