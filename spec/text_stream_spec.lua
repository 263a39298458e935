-- Text and html bodies given as { path = } or { source = }: streamed as
-- quoted-printable in bounded memory, checked by Python's email parser.
local mailer = require "mailer"
local servers = require "support.servers"
local mime = require "support.mime"

-- A file in the spec run's temp directory; its path.
local function tmpfile(name, data)
  local path = servers.tmpdir() .. "/" .. name
  servers.writefile(path, data)
  return path
end

local function base(t)
  local m = { from = "alice@example.com", to = "bob@example.com", subject = "streamed",
              date = "Mon, 1 Jan 2024 00:00:00 +0000", message_id = "<s@example.com>" }
  for k, v in pairs(t) do m[k] = v end
  return m
end

-- A text that exercises every QP rule: UTF-8, '=', trailing blanks, lines
-- starting with '.' and "From ", a line over 998 octets, CRLF and LF.
local function tricky(n)
  local parts = {}
  for i = 1, n do
    parts[#parts + 1] = "Gr\195\188\195\159e " .. i .. " = sign, trailing space \n"
    parts[#parts + 1] = ".leading dot\r\nFrom the start\n"
    if i % 50 == 0 then parts[#parts + 1] = ("x"):rep(1500) .. "\n" end
  end
  return table.concat(parts)
end

describe("streamed text bodies", function()
  teardown(function() servers.stop_all() end)

  it("a text body by path renders exactly, with an exact size, and parses back", function()
    local body = tricky(3000)
    local m = assert(mailer.message(base { text = { path = tmpfile("t.txt", body) } }))
    local raw = assert(m:render())
    assert.are.equal(#raw, m:size())
    local r = mime.parse(raw)
    assert.equal("text/plain", r.structure)
    assert.equal("utf-8", r.parts[1].charset)
    -- (hard line breaks are CRLF on the wire and in what the parser decodes)
    assert.equal((body:gsub("\r\n", "\n")), (r.parts[1].text:gsub("\r\n", "\n")))
    for line in raw:gmatch("([^\r\n]*)\r\n") do assert.is_true(#line <= 76) end
  end)

  it("an html body from a source that yields, beside a text body by path", function()
    local chunks = { "<p>caf\195\169", " = 1</p>\n", "<p>end</p>" }
    local i = 0
    local src = coroutine.wrap(function()
      for _, c in ipairs(chunks) do coroutine.yield(c) end
    end)
    local m = assert(mailer.message(base { text = { path = tmpfile("t2.txt", "plain\n") },
      html = { source = function() i = i + 1; if i <= #chunks then return src() end end } }))
    assert.is_nil(m:size())   -- a source's encoded size is not known ahead
    local r = mime.parse(assert(m:render()))
    assert.equal("multipart/alternative(text/plain,text/html)", r.structure)
    assert.equal(table.concat(chunks), (r.parts[2].text:gsub("\r\n", "\n")))
  end)

  it("refuses a file that is not UTF-8, a missing file and a bad spec, with the field", function()
    local m, err = mailer.message(base { text = { path = tmpfile("bad.txt", "abc\255def") } })
    assert.is_nil(m)
    assert.are.equal("input", err.kind)
    assert.are.equal("text", err.field)
    m, err = mailer.message(base { html = { path = servers.tmpdir() .. "/none.html" } })
    assert.is_nil(m)
    assert.are.equal("html", err.field)
    m, err = mailer.message(base { text = { path = "x", source = print } })
    assert.is_nil(m)
    assert.are.equal("text", err.field)
  end)

  it("sends a text body by path to a real server byte for byte", function()
    local s = servers.aiosmtpd {}
    local m = assert(mailer.message(base { text = { path = tmpfile("t3.txt", tricky(500)) } }))
    local raw = assert(m:render())
    assert(mailer.send(m, { host = s.host, port = s.port, security = "none" }))
    assert.are.equal(raw, s:wait_messages(1, 5)[1].data)
  end)

  local rss_it = os.getenv("MAILER_UNDER_ASAN") and pending or it
  rss_it("keeps data= and CRLF text strings in place instead of copying them", function()
    local script = servers.tmpdir() .. "/keep.lua"
    local sf = assert(io.open(script, "wb"))
    sf:write([[
      local mailer = require "mailer"
      local function rss() return tonumber(io.open("/proc/self/status"):read("*a"):match("VmRSS:%s+(%d+)")) end
      local data = string.rep("x", 48 * 1048576)
      local text = string.rep("line\r\n", 2000000)
      collectgarbage() collectgarbage()
      local before = rss()
      local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "s",
        text = text, attachments = { { data = data, filename = "d.bin" } } })
      local grown = rss() - before
      data, text = nil, nil
      collectgarbage() collectgarbage()
      -- the message keeps the strings alive: it still renders them whole
      local n = 0
      for c in m:chunks() do n = n + #c end
      assert(n == m:size(), "rendered " .. n .. " of " .. m:size())
      print(grown)
    ]])
    sf:close()
    local lua = arg and arg[-1] or "lua5.4"
    local p = assert(io.popen(("%s %s 2>&1"):format(lua, script)))
    local out = p:read("*a")
    p:close()
    local kib = tonumber(out)
    assert.is_number(kib, out)
    -- 60 MiB of strings given; a copy would add as much again
    assert.is_true(kib < 8 * 1024, ("building the message grew RSS by %d KiB"):format(kib or -1))
  end)

  rss_it("renders a 64 MiB text body by path in bounded memory", function()
    local path = servers.tmpdir() .. "/big.txt"
    local f = assert(io.open(path, "wb"))
    local block = tricky(200)
    local n = 0
    while n < 64 * 1048576 do f:write(block); n = n + #block end
    f:close()
    local script = servers.tmpdir() .. "/rss.lua"
    local sf = assert(io.open(script, "wb"))
    sf:write([[
      local mailer = require "mailer"
      local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "big",
        text = { path = arg[1] } })
      local total = 0
      for c in m:chunks(65536) do total = total + #c end
      assert(total == m:size())
      local st = io.open("/proc/self/status"):read("*a")
      print(st:match("VmHWM:%s+(%d+)"))
    ]])
    sf:close()
    local lua = arg and arg[-1] or "lua5.4"
    local p = assert(io.popen(("%s %s %s"):format(lua, script, path)))
    local kib = tonumber(p:read("*a"))
    p:close()
    assert.is_number(kib)
    assert.is_true(kib < 32 * 1024, ("peak RSS %d KiB"):format(kib or -1))
  end)
end)
