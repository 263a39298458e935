-- mailer.raw_message: a message file sent as is (what a queue stores),
-- against aiosmtpd: the bytes the server records are the file's, the
-- envelope is the one given, 8-bit octets ask for BODY=8BITMIME.
local mailer = require "mailer"
local servers = require "support.servers"

-- A file in the spec run's temp directory; its path.
local function tmpfile(name, data)
  local path = servers.tmpdir() .. "/" .. name
  servers.writefile(path, data)
  return path
end

describe("raw messages", function()
  local s
  setup(function() s = servers.aiosmtpd {} end)
  teardown(function() servers.stop_all() end)

  it("sends a rendered message byte for byte with its own envelope", function()
    local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "raw",
      text = "first\n.\nsecond", attachments = { { data = ("\0\1\2"):rep(40000), filename = "b.bin" } } })
    local bytes = assert(m:render())
    local path = tmpfile("one.eml", bytes)
    local raw = assert(mailer.raw_message(path, { from = "bounce@example.com",
                                                 to = { "c@example.com", "d@example.com" } }))
    assert.are.equal(#bytes, raw:size())
    assert.are.equal(bytes, raw:render())
    local c = assert(mailer.connect { host = s.host, port = s.port, security = "none" })
    local before = #s:messages()
    local r = assert(c:send(raw))
    assert.are.same({ "c@example.com", "d@example.com" }, r.accepted)
    c:close()
    local got = s:wait_messages(before + 1, 5)[before + 1]
    assert.are.equal("bounce@example.com", got.mail_from)
    assert.are.equal(bytes, got.data)
    -- SIZE is the file's; 7-bit: no BODY= parameter
    assert.are.same({ "SIZE=" .. #bytes }, got.mail_options)
  end)

  it("asks for BODY=8BITMIME when the file has 8-bit octets", function()
    local path = tmpfile("eight.eml", "From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nGr\195\188\195\159e\r\n")
    local raw = assert(mailer.raw_message(path, { from = "a@example.com", to = "b@example.com" }))
    local c = assert(mailer.connect { host = s.host, port = s.port, security = "none" })
    local before = #s:messages()
    assert(c:send(raw))
    c:close()
    local got = s:wait_messages(before + 1, 5)[before + 1]
    local f = assert(io.open(path, "rb"))
    local size = #f:read("*a")
    f:close()
    assert.are.same({ "SIZE=" .. size, "BODY=8BITMIME" }, got.mail_options)
  end)

  it("refuses a missing or empty file, and a bad envelope, with kind input", function()
    local r, err = mailer.raw_message(servers.tmpdir() .. "/nope.eml", { from = "a@b.example", to = "c@d.example" })
    assert.is_nil(r)
    assert.are.equal("input", err.kind)
    r, err = mailer.raw_message(tmpfile("empty.eml", ""), { from = "a@b.example", to = "c@d.example" })
    assert.is_nil(r)
    assert.are.equal("input", err.kind)
    r, err = mailer.raw_message(tmpfile("ok.eml", "x\r\n"), { from = "not an address", to = "c@d.example" })
    assert.is_nil(r)
    assert.are.equal("envelope.from", err.field)
    r, err = mailer.raw_message(tmpfile("ok2.eml", "x\r\n"), { from = "a@b.example", to = {} })
    assert.is_nil(r)
    assert.are.equal("envelope.to", err.field)
  end)

  it("fails, without completing the message, when the file changed size since", function()
    local path = tmpfile("grow.eml", "Subject: x\r\n\r\nshort\r\n")
    local raw = assert(mailer.raw_message(path, { from = "a@example.com", to = "b@example.com" }))
    tmpfile("grow.eml", "Subject: x\r\n\r\nmuch longer than before\r\n")
    local c = assert(mailer.connect { host = s.host, port = s.port, security = "none" })
    local before = #s:messages()
    local r, err = c:send(raw)
    assert.is_nil(r)
    assert.matches("changed", err.message)
    c:close()
    assert.are.equal(before, #s:wait_messages(before + 1, 1))
  end)
end)
