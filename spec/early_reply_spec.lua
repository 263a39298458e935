-- A server that refuses a message in the middle of DATA (552 while the body
-- is still coming) and closes: the error is the server's reply, never a
-- timeout or a bare "connection lost" (the one-driver issue, item 9).
local mailer = require "mailer"
local servers = require "support.servers"
local transports = require "support.transports"

for _, tr in ipairs(transports.list()) do
describe("an early refusal in the middle of DATA (" .. tr.name .. ")", function()
  teardown(function() servers.stop_all() end)

  it("comes back as the server's 552, not as a timeout", function()
    local h = servers.hostile {
      { send = "220 mx ESMTP\r\n" }, { expect = "EHLO" }, { send = "250-mx\r\n250 ENHANCEDSTATUSCODES\r\n" },
      { expect = "MAIL" }, { send = "250 ok\r\n" }, { expect = "RCPT" }, { send = "250 ok\r\n" },
      { expect = "DATA" }, { send = "354 go on\r\n" }, { sleep = 0.3 },
      { send = "552 5.3.4 message too big for this mailbox\r\n" }, { close = true },
      linger = 1,
    }
    local c = assert(tr.connect { host = h.host, port = h.port, security = "none", timeout = 5,
                                      helo = "client.test" })
    local t0 = os.time()
    local r, err = c:send(assert(mailer.message { from = "a@example.com", to = "b@example.com",
      subject = "big", text = "x", attachments = { { data = ("z"):rep(8 * 1024 * 1024), filename = "z" } } }))
    assert.is_nil(r)
    assert.are.equal("smtp", err.kind, tostring(err))
    assert.are.equal(552, err.code)
    assert.are.equal("5.3.4", err.enhanced)
    assert.matches("too big", err.message)
    assert.is_true(os.time() - t0 < 5)   -- not the timeout
    c:close()
  end)
end)
end
