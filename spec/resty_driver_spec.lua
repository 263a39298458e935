-- The cosocket driver's own rules, outside nginx (on every Lua version):
-- support/cosocket.lua plays ngx.socket.tcp over LuaSocket, with a
-- connection pool, so the keepalive logic (pool names, the NOOP check, a
-- dead pooled connection replaced) and the option checks run here too.
-- spec/resty_nginx_spec.lua does the same against the real thing.
local mailer = require "mailer"
local servers = require "support.servers"
local cosocket = require "support.cosocket"

local function msg(n)
  return { from = "a@example.com", to = "b@example.com", subject = "n" .. (n or 1), text = "x" }
end

describe("the cosocket driver", function()
  teardown(function()
    cosocket.clear()
    servers.stop_all()
  end)
  before_each(function() cosocket.clear() end)

  local function opts(s, extra)
    local o = { host = "127.0.0.1", port = s.port, security = "none", socket = cosocket.tcp() }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  it("is what mailer.connect returns for socket =, and says so", function()
    local s = servers.aiosmtpd {}
    local c = assert(mailer.connect(opts(s)))
    assert.matches("^mailer%.Connection %(open, cosocket%)", tostring(c))
    assert.is_number(c.capabilities.SIZE)
    assert.is_false(c.tls)
    assert.are.equal(250, assert(c:send(msg())).code)
    assert.is_true(c:close())
    assert.is_true(c:close())
    assert.matches("closed", tostring(c))
    assert.has_error(function() c:noop() end, "attempt to use a closed connection")
    assert.has_error(function() c:setkeepalive() end, "attempt to use a closed connection")
  end)

  it("raises on a socket that is not an object, refuses per-connection CA files", function()
    assert.has_error(function() mailer.connect { host = "h", socket = true } end)
    assert.has_error(function() mailer.connect { host = "h", socket = "tcp" } end)
    local c, err = mailer.connect { host = "h", socket = cosocket.tcp(), tls = { cafile = "/x.pem" } }
    assert.is_nil(c)
    assert.are.equal("unsupported", err.kind)
    assert.are.equal("tls.cafile", err.field)
  end)

  it("keeps the C connection's setkeepalive answer: unsupported", function()
    local s = servers.aiosmtpd {}
    local c = assert(mailer.connect { host = "127.0.0.1", port = s.port, security = "none", socket = false })
    local ok, err = c:setkeepalive(1000, 2)
    assert.is_nil(ok)
    assert.are.equal("unsupported", err.kind)
    c:close()
  end)

  it("parks the connection after RSET and takes it back after a NOOP", function()
    local s = servers.aiosmtpd { auth = { user = "u", password = "p" }, auth_require_tls = false }
    local creds = { username = "u", password = "p", allow_plaintext_auth = true }
    local c = assert(mailer.connect(opts(s, creds)))
    assert(c:send(msg(1)))
    assert.is_true(c:setkeepalive(10000, 4))
    assert.has_error(function() c:noop() end, "attempt to use a closed connection")
    assert.are.equal(1, cosocket.pooled())
    local lines = {}
    creds.trace = function(dir, line) lines[#lines + 1] = dir .. ": " .. line end
    local c2 = assert(mailer.connect(opts(s, creds)))
    assert.are.equal(1, c2.sock:getreusedtimes())
    assert.are.equal("C: NOOP", lines[1])   -- no greeting, EHLO or AUTH again
    assert(c2:send(msg(2)))
    assert.is_true(c2:setkeepalive())
    assert.are.equal(1, s:connections())
    s:wait_messages(2, 5)
  end)

  it("never reuses a connection for another password, user or TLS policy", function()
    local s = servers.aiosmtpd { auth = { user = "u", password = "p" }, auth_require_tls = false }
    local base = { username = "u", password = "p", allow_plaintext_auth = true }
    assert.is_true(assert(mailer.connect(opts(s, base))):setkeepalive())
    local c, err = mailer.connect(opts(s, { username = "u", password = "wrong", allow_plaintext_auth = true }))
    assert.is_nil(c)
    assert.are.equal("auth", err.kind)
    c, err = mailer.connect(opts(s, { username = "v", password = "p", allow_plaintext_auth = true }))
    assert.are.equal("auth", err.kind)
    c = assert(mailer.connect(opts(s, { username = "u", password = "p", allow_plaintext_auth = true,
                                        security = "starttls-optional" })))
    assert.are.equal(0, c.sock:getreusedtimes())
    c:close()
    assert.are.equal(4, s:connections())
    assert.are.equal(1, cosocket.pooled())
  end)

  it("replaces a pooled connection that fails its NOOP check, without an error", function()
    local GREET = { send = "220 mx.test ESMTP\r\n" }
    local h = servers.hostile { scripts = {
      { GREET, { expect = "EHLO" }, { send = "250 mx\r\n" },
        { expect = "RSET" }, { send = "250 ok\r\n" },
        { expect = "NOOP" }, { send = "421 4.4.2 idle too long\r\n" }, { close = true } },
      { GREET, { expect = "EHLO" }, { send = "250 mx\r\n" },
        { expect = "QUIT" }, { send = "221 bye\r\n" } } } }
    local o = { host = "127.0.0.1", port = h.port, security = "none", helo = "client.test" }
    o.socket = cosocket.tcp()
    assert.is_true(assert(mailer.connect(o)):setkeepalive())
    o.socket = cosocket.tcp()
    local c = assert(mailer.connect(o))
    assert.are.equal(0, c.sock:getreusedtimes())
    c:close()
    h:wait(5)
    assert.are.equal("EHLO client.test\r\nQUIT\r\n", h:received(2))
  end)

  it("does not pool a connection whose RSET fails", function()
    local GREET = { send = "220 mx.test ESMTP\r\n" }
    local h = servers.hostile { GREET, { expect = "EHLO" }, { send = "250 mx\r\n" },
      { expect = "RSET" }, { send = "421 4.3.2 shutting down\r\n" }, { read_all = true } }
    local c = assert(mailer.connect { host = "127.0.0.1", port = h.port, security = "none",
                                      socket = cosocket.tcp() })
    local ok, err = c:setkeepalive()
    assert.is_nil(ok)
    assert.are.equal(421, err.code)
    assert.are.equal(0, cosocket.pooled())
    assert.matches("closed", tostring(c))
  end)
end)
