-- Text and HTML bodies given with bare line ends (LF, CR, or a mix) are
-- borrowed, not copied: the renderer writes each bare CR or LF as CRLF as
-- it reads. The oracle is the same text given already in CRLF form (which
-- was always sent as given): the two renderings must be identical, octet
-- for octet, and size() exact, whatever the encoding chosen and wherever
-- the renderer's blocks (14 KiB) and the measuring blocks (4 KiB) cut.
local mailer = require "mailer"

local function crlf(s)
  return (s:gsub("\r\n", "\n"):gsub("\r", "\n"):gsub("\n", "\r\n"))
end

local function render(text, html)
  local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "t",
                                    date = 1700000000, message_id = "<t@example.com>",
                                    text = text, html = html })
  local out = assert(m:render())
  return out, m:size(), m
end

-- a line of n octets ending in the given line end
local function line(n, ending, ch) return (ch or "x"):rep(n) .. ending end

local cases = {
  { "LF only", ("hello world\n"):rep(40) },
  { "CR only", ("hello world\r"):rep(40) },
  { "mixed LF, CR, CRLF", "one\ntwo\r\nthree\rfour\n\r\nfive\r\r\nsix" },
  { "ends in a bare CR", "last line\r" },
  { "leading LF", "\n\nbody" },
  { "long lines (quoted-printable)", line(3000, "\n") .. line(100, "\r") .. "tail" },
  { "non-ASCII (quoted-printable)", ("Grüße aus Köln, ça va?\n"):rep(300) },
  { "mostly non-ASCII (base64)", ("日本語のテキストです。\n"):rep(800) },
  { "dot and From at line start", ".\n.leading dot\nFrom here\n" },
}
-- CRs and LFs around every block edge of the renderer (57 * 256 octets of
-- input, half of it per slice when normalising) and of the size pass (4 KiB)
for _, edge in ipairs { 4096, 57 * 128, 57 * 256 } do
  for d = -2, 2 do
    cases[#cases + 1] = { "CR LF across " .. edge .. (d >= 0 and "+" or "") .. d,
                          line(edge + d - 1, "\r\n") .. line(50, "\n") .. line(70, "\r") .. "end\n" }
    cases[#cases + 1] = { "LF runs across " .. edge .. (d >= 0 and "+" or "") .. d,
                          ("ab\n"):rep(math.floor((edge + d) / 3)) .. "\r\r\n\n" .. ("é\n"):rep(200) }
  end
end

describe("texts with bare line ends", function()
  for _, c in ipairs(cases) do
    local name, text = c[1], c[2]
    it("render exactly as their CRLF form: " .. name, function()
      local a, asize = render(text)
      local b, bsize = render(crlf(text))
      assert.are.equal(#b, #a)
      assert.is_true(a == b, "the renderings differ")
      assert.are.equal(#a, asize)
      assert.are.equal(bsize, asize)
      assert.is_nil(a:find("[^\r]\n"))
      assert.is_nil(a:find("\r[^\n]"))
    end)
  end

  it("render exactly as their CRLF form in text and html together (multipart/alternative)", function()
    local text = ("plain line\n"):rep(2000) .. "ü\r"
    local html = ("<p>para</p>\r"):rep(1500) .. "<p>ä</p>\n"
    local a, asize, m = render(text, html)
    local b = render(crlf(text), crlf(html))
    assert.are.equal(#a, asize)
    -- boundaries are random per message: compare with them taken out
    local ba = a:match('boundary="([^"]+)"')
    local bb = b:match('boundary="([^"]+)"')
    assert.truthy(ba and bb)
    local plain_a = a:gsub(ba:gsub("%p", "%%%0"), "B")
    local plain_b = b:gsub(bb:gsub("%p", "%%%0"), "B")
    assert.are.equal(plain_b, plain_a)
    assert.truthy(m)
  end)

  it("borrow the caller's string: building a message over a 16 MiB LF text makes no copy of it", function()
    local statm = io.open("/proc/self/statm")
    if not statm then pending("no /proc/self/statm") return end
    statm:close()
    local function rss_kib()
      local f = assert(io.open("/proc/self/statm"))
      local resident = f:read("*a"):match("^%d+%s+(%d+)")
      f:close()
      return tonumber(resident) * 4
    end
    local text = ("0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"):rep(16 * 1024 * 1024 / 64)
    collectgarbage("collect")
    local before = rss_kib()
    local m = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "big",
                                      text = text })
    local grew = rss_kib() - before
    -- (a CRLF copy would be 16.25 MiB, written, so resident)
    assert.is_true(grew < 4096, ("resident memory grew by %d KiB"):format(grew))
    local n = 0
    for chunk in m:chunks() do n = n + #chunk end
    assert.are.equal(m:size(), n)
  end)
end)
