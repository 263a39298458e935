-- SMTP smuggling (SEC Consult 2023; attacks.md DATA-01..06): the nine
-- malformed end-of-data sequences of smtpsmug, each followed by a forged
-- MAIL FROM / RCPT TO / DATA, in text bodies and in source attachments
-- split at every offset across chunks. The server must see exactly one
-- message per send, from the real envelope, and the client must put no
-- bare CR or LF on the wire.
local mailer = require "mailer"
local servers = require "support.servers"
local mime = require "support.mime"

local ENDINGS = { "\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r",
                  "\r\n\0.\r\n" }
local FORGED = "MAIL FROM:<spoof@evil.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nforged\r\n.\r\n"

local function show(s) return (s:gsub("[%c]", function(c) return ("\\%d"):format(c:byte()) end)) end

-- Offset of the first bare CR or bare LF in s, or nil.
local function bare_crlf(s)
  local i = 1
  while true do
    local a = s:find("[\r\n]", i)
    if not a then return nil end
    if s:sub(a, a + 1) == "\r\n" then i = a + 2 else return a end
  end
end

local function count(s, pat)
  local n, i = 0, 1
  while true do
    local a, b = s:find(pat, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

local function base(t)
  local m = { from = "alice@example.com", to = "bob@example.com", subject = "smuggling" }
  for k, v in pairs(t) do m[k] = v end
  return m
end

describe("SMTP smuggling", function()
  teardown(function() servers.stop_all() end)

  describe("on the wire (exact bytes, scripted server)", function()
    for i, ending in ipairs(ENDINGS) do
      it("text body with " .. show(ending) .. " and forged commands is one message", function()
        local h = servers.hostile {
          { send = "220 mx.test ESMTP\r\n" }, { expect = "EHLO" }, { send = "250 mx.test\r\n" },
          { expect = "MAIL" }, { send = "250 ok\r\n" }, { expect = "RCPT" }, { send = "250 ok\r\n" },
          { expect = "DATA" }, { send = "354 go\r\n" }, { expect_data = true },
          { send = "250 queued\r\n" }, { expect = "QUIT" }, { send = "221 bye\r\n" },
        }
        local r, err = mailer.send(base { text = "hello" .. ending .. FORGED },
          { host = "127.0.0.1", port = h.port, security = "none", timeout = 5 })
        assert.truthy(r, tostring(err))
        local ok, why = h:wait(5)
        assert.is_true(ok, tostring(why) .. "\n" .. h:events())
        local wire = h:received()
        assert.is_nil(bare_crlf(wire), "bare CR or LF at " .. tostring(bare_crlf(wire)))
        assert.is_nil(wire:find("\0", 1, true))
        assert.are.equal(1, count(wire, "\r\n.\r\n"), "end-of-data once (case " .. i .. ")")
        -- (the forged commands are there, as body text after the one DATA)
        assert.are.equal(1, count(wire, "\r\nDATA\r\n354") + count(wire, "\r\nDATA\r\nDate:"))
      end)
    end
  end)

  describe("recorded by a server", function()
    local s, conn
    setup(function()
      s = servers.aiosmtpd {}
      conn = assert(mailer.connect { host = s.host, port = s.port, security = "none", timeout = 10 })
    end)
    teardown(function() if conn then conn:close() end end)

    -- Send msgs, then check the server recorded exactly them; returns the
    -- new records.
    local function send_all(list)
      local before = #s:messages()
      for _, t in ipairs(list) do
        local r, err = conn:send(t)
        assert.truthy(r, tostring(err))
      end
      local msgs = s:wait_messages(before + #list, 10)
      assert.are.equal(before + #list, #msgs)
      local out = {}
      for k = before + 1, #msgs do
        local m = msgs[k]
        assert.are.equal("alice@example.com", m.mail_from)
        assert.are.same({ "bob@example.com" }, m.rcpt_tos)
        assert.is_nil(bare_crlf(m.data), "bare CR or LF in recorded data")
        out[#out + 1] = m
      end
      return out
    end

    it("text and html bodies holding every ending, anywhere", function()
      local list, want = {}, {}
      for _, ending in ipairs(ENDINGS) do
        for _, body in ipairs { ending .. FORGED, "x" .. ending .. FORGED, "x" .. ending,
                                 "x" .. ending .. FORGED .. ending } do
          list[#list + 1] = base { text = body }
          want[#want + 1] = body
          list[#list + 1] = base { html = body }
          want[#want + 1] = body
        end
      end
      local recs = send_all(list)
      local raws = {}
      for k, m in ipairs(recs) do raws[k] = m.data end
      local parsed = mime.parse_many(raws)
      for k, r in ipairs(parsed) do
        -- every line break is a CRLF on the wire; the text is otherwise intact
        local expect = want[k]:gsub("\r\n", "\n"):gsub("\r", "\n")
        local got = (r.parts[1].text or ""):gsub("\r\n", "\n")
        assert.are.equal(show(expect), show(got), "message " .. k)
      end
    end)

    it("source attachments split at every offset across chunks", function()
      local list, sums = {}, {}
      for _, ending in ipairs(ENDINGS) do
        local payload = "hello" .. ending .. FORGED
        for cut = 0, #payload do
          local chunks = { payload:sub(1, cut), payload:sub(cut + 1) }
          local n = 0
          list[#list + 1] = base { text = "see attachment", attachments = { {
            filename = "p.bin", content_type = "application/octet-stream",
            source = function() n = n + 1 return chunks[n] end } } }
          sums[#sums + 1] = payload
        end
        -- and one octet per chunk
        local pos = 0
        list[#list + 1] = base { text = "see attachment", attachments = { {
          filename = "p.bin", source = function()
            pos = pos + 1
            if pos > #payload then return nil end
            return payload:sub(pos, pos)
          end } } }
        sums[#sums + 1] = payload
      end
      local recs = send_all(list)
      local raws = {}
      for k, m in ipairs(recs) do raws[k] = m.data end
      local parsed = mime.parse_many(raws)
      local want = mime.sha256_many(sums)
      for k, r in ipairs(parsed) do
        assert.are.equal(2, #r.parts, "message " .. k)
        assert.are.equal(want[k], r.parts[2].sha256, "attachment " .. k .. " changed")
      end
    end)
  end)
end)
