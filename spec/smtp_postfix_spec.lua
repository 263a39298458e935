-- Delivery through a real Postfix (started by the spec helpers on
-- 127.0.0.1, delivering into a Maildir): what arrives is parsed with
-- Python's email and compared with what was rendered.
local mailer = require "mailer"
local servers = require "support.servers"
local mime = require "support.mime"

-- The raw bytes of a delivered message, whatever shape the helper uses.
local function raw_of(m) return type(m) == "string" and m or m.data or m.raw end

describe("smtp against Postfix", function()
  teardown(function() servers.stop_all() end)

  it("delivers messages that parse like the rendered ones", function()
    local p = servers.postfix {}
    local conn, err = mailer.connect { host = "127.0.0.1", port = p.port, security = "none",
                                       timeout = 20 }
    assert.is_nil(err)
    local msgs, want = {}, {}
    for i = 1, 3 do
      msgs[i] = assert(mailer.message {
        from = "Alice Ünal <alice@example.com>", to = "user" .. i .. "@" .. p.domain,
        subject = "Grüße " .. i, text = "line one\n.\nline " .. i .. "\n",
        attachments = { { data = string.rep("\0\1\2binary", 1000), filename = "bin-" .. i .. ".dat" } },
      })
      want[i] = mime.parse_many({ assert(msgs[i]:render()) })[1]
    end
    local results = conn:send_many(msgs)
    conn:close()
    for i = 1, 3 do
      assert.is_nil(results[i].error and tostring(results[i].error))
      assert.are.equal(250, results[i].code)
    end
    -- Postfix stores Maildir files with LF line ends; crlf=true restores CRLF
    local got = p:wait_messages(3, 20, { crlf = true })
    assert.are.equal(3, #got)
    local parsed = {}
    for i, m in ipairs(got) do parsed[i] = mime.parse_many({ raw_of(m) })[1] end
    table.sort(parsed, function(a, b) return tostring(a.subject) < tostring(b.subject) end)
    for i = 1, 3 do
      assert.are.equal(want[i].subject, parsed[i].subject)
      assert.are.same(want[i].parts, parsed[i].parts)
      assert.are.same({}, parsed[i].defects)
    end
    -- Postfix adds its trace headers on top; our header block arrives
    -- byte for byte below them, and the body after it
    for _, m in ipairs(got) do
      local raw, found = raw_of(m), false
      for i = 1, 3 do
        local rendered = assert(msgs[i]:render())
        local s = raw:find(rendered, 1, true)
        if s then
          found = true
          assert.are.equal(#raw, s + #rendered - 1)
        end
      end
      assert.is_true(found, "a delivered message does not hold a rendered one unchanged")
    end
  end)
end)
