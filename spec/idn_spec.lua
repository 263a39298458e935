-- International domain names (issue 13): a non-ASCII domain is written as
-- its IDNA A-label (UTS #46, non-transitional, through libidn2) in the
-- headers and in the envelope whenever the local part is ASCII, so such a
-- message needs no SMTPUTF8; a non-ASCII local part needs SMTPUTF8 (else
-- kind "unsupported" naming the address); an invalid IDN is kind "input"
-- with the field. The A-labels are compared with what idn2(1) and
-- Python's encodings.idna produce.
local mailer = require "mailer"
local servers = require "support.servers"
local transports = require "support.transports"

local function base(t)
  local m = { from = "alice@example.com", to = "bob@example.com", subject = "s", text = "body" }
  for k, v in pairs(t or {}) do m[k] = v end
  return m
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- run a command (without the sanitizer runtime), return its output lines
local function lines_of(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD -u ASAN_OPTIONS " .. cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

local function have(prog)
  return os.execute("command -v " .. prog .. " >/dev/null 2>&1") == true or
         os.execute("command -v " .. prog .. " >/dev/null 2>&1") == 0
end

-- the A-label form our envelope gives for x@domain
local function ours(domain)
  local m, err = mailer.message(base { to = "x@" .. domain })
  if not m then return nil, err end
  local _, rcpts = m:envelope()
  return rcpts[1]:match("^x@(.*)$")
end

-- IDNA 2003 (Python) and UTS #46 non-transitional agree on these
local SAME = { "bücher.de", "münchen.example", "ελληνικά.gr", "例え.テスト", "пример.рф",
               ("例"):rep(22) .. ".jp", "ｂüｃher.ｄｅ", "bu\204\136cher.de", "bücher\227\128\130de" }
-- and differ on the deviation characters (ß, final sigma): transitional
-- processing maps them away, non-transitional keeps them
local DEVIATIONS = { ["faß.de"] = { "xn--fa-hia.de", "fass.de" }, ["ς.gr"] = { "xn--3xa.gr", "xn--4xa.gr" } }

describe("international domain names", function()
  it("become A-labels in the headers and the envelope when the local part is ASCII", function()
    local m = assert(mailer.message(base {
      from = "Alice <alice@bücher.de>", to = { "user@bücher.de", { name = "Jo", address = "j@münchen.example" } },
      cc = "x@пример.рф", bcc = "y@例え.テスト", reply_to = "r@BÜCHER.de", sender = "s@bücher.de" }))
    assert.are.equal("user@xn--bcher-kva.de, Jo <j@xn--mnchen-3ya.example>", m:header("To"))
    assert.are.equal("Alice <alice@xn--bcher-kva.de>", m:header("From"))
    assert.are.equal("r@xn--bcher-kva.de", m:header("Reply-To"))
    assert.are.equal("s@xn--bcher-kva.de", m:header("Sender"))
    assert.are.equal("x@xn--e1afmkfd.xn--p1ai", m:header("Cc"))
    local from, rcpts = m:envelope()
    assert.are.equal("alice@xn--bcher-kva.de", from)
    assert.are.same({ "user@xn--bcher-kva.de", "j@xn--mnchen-3ya.example", "x@xn--e1afmkfd.xn--p1ai",
                      "y@xn--r8jz45g.xn--zckzah" }, rcpts)
    local raw = m:render()
    local head = raw:match("^(.-\r\n)\r\n")
    assert.is_nil(head:find("[\128-\255]"), "8-bit octets in the header block")
    assert.matches("Message%-ID: <[^>]*@xn%-%-bcher%-kva%.de>", raw)
  end)

  it("treat a U-label and its A-label as the same recipient", function()
    local m = assert(mailer.message(base { to = { "u@bücher.de", "u@XN--BCHER-KVA.DE", "u@Bücher.de" } }))
    local _, rcpts = m:envelope()
    assert.are.same({ "u@xn--bcher-kva.de" }, rcpts)
  end)

  it("keep a non-ASCII local part (and its domain) as given: that address needs SMTPUTF8", function()
    local m = assert(mailer.message(base { to = "jörg@bücher.de" }))
    assert.are.equal("jörg@bücher.de", m:header("To"))
  end)

  it("refuse an invalid IDN with kind \"input\" and the field", function()
    local long_label = ("a"):rep(62) .. "ü.de"   -- an A-label over 63 octets
    for _, d in ipairs { "a⒈com", "a\226\128\141b.de", "☃.net", long_label, "a.ü-.de", "-ü.de",
                         "٢٣.eg", "xn--ü.de", "ü＿x.de", "ü..de", "ü.de-" } do
      local m, err = mailer.message(base { to = { "ok@example.com", "x@" .. d } })
      assert.is_nil(m, d)
      assert.are.equal("input", err.kind)
      assert.are.equal("to[2]", err.field)
      m, err = mailer.message(base { reply_to = { name = "R", address = "x@" .. d } })
      assert.is_nil(m, d)
      assert.are.equal("reply_to", err.field)
    end
  end)

  it("match idn2(1) (UTS #46 non-transitional)", function()
    if not have("idn2") then
      pending("idn2 is not installed (Debian: idn2)")
      return
    end
    local list = {}
    for _, d in ipairs(SAME) do list[#list + 1] = d end
    for d in pairs(DEVIATIONS) do list[#list + 1] = d end
    local args = {}
    for i, d in ipairs(list) do args[i] = q(d) end
    local got = lines_of("idn2 --quiet -- " .. table.concat(args, " "))
    assert.are.equal(#list, #got)
    for i, d in ipairs(list) do
      assert.are.equal(got[i], ours(d), d)
    end
  end)

  it("match Python's encodings.idna except where IDNA 2003 is transitional", function()
    local py = "/usr/bin/python3 -c " .. q("import sys\nfor d in sys.argv[1:]: print(d.encode('idna').decode().lower())")
    local args = {}
    for i, d in ipairs(SAME) do args[i] = q(d) end
    local got = lines_of(py .. " " .. table.concat(args, " "))
    assert.are.equal(#SAME, #got)
    for i, d in ipairs(SAME) do
      assert.are.equal(got[i], ours(d), d)
    end
    for d, want in pairs(DEVIATIONS) do
      assert.are.equal(want[1], ours(d))
      assert.are.same({ want[2] }, lines_of(py .. " " .. q(d)))
    end
  end)
end)

for _, tr in ipairs(transports.list()) do
describe("international domains over SMTP (" .. tr.name .. ")", function()
  teardown(function() servers.stop_all() end)

  it("need no SMTPUTF8 with an ASCII local part", function()
    local s = servers.aiosmtpd { smtputf8 = false }
    local c = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local r = assert(c:send(base { from = "a@bücher.de", to = { "b@münchen.example" }, reply_to = "c@пример.рф" }))
    assert.are.same({ "b@xn--mnchen-3ya.example" }, r.accepted)
    -- an explicit envelope is converted the same way
    r = assert(c:send(base(), { envelope = { from = "bounce@bücher.de", to = { "d@bücher.de" } } }))
    assert.are.same({ "d@xn--bcher-kva.de" }, r.accepted)
    c:close()
    local got = s:wait_messages(2, 5)
    assert.are.equal("a@xn--bcher-kva.de", got[1].mail_from)
    assert.are.same({ "b@xn--mnchen-3ya.example" }, got[1].rcpt_tos)
    assert.is_nil(table.concat(got[1].mail_options or {}, " "):find("SMTPUTF8"))
    assert.is_nil(got[1].data:match("^(.-)\r\n\r\n"):find("[\128-\255]"))
    assert.are.equal("bounce@xn--bcher-kva.de", got[2].mail_from)
    assert.are.same({ "d@xn--bcher-kva.de" }, got[2].rcpt_tos)
  end)

  it("refuse a non-ASCII local part without SMTPUTF8 as unsupported, naming the address", function()
    local s = servers.aiosmtpd { smtputf8 = false }
    local c = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local r, err = c:send(base { to = { "b@example.com", "jörg@bücher.de" } })
    assert.is_nil(r)
    assert.are.equal("unsupported", err.kind)
    assert.matches("jörg@bücher.de", err.message, 1, true)
    r, err = c:send(base(), { envelope = { to = { "b@example.com", "zoë@example.com" } } })
    assert.is_nil(r)
    assert.are.equal("unsupported", err.kind)
    assert.matches("zoë@example.com", err.message, 1, true)
    assert.is_true(c:noop())
    c:close()
    local yes = servers.aiosmtpd { smtputf8 = true }
    c = assert(tr.connect { host = yes.host, port = yes.port, security = "none" })
    assert(c:send(base { to = "jörg@bücher.de" }))
    c:close()
    local got = yes:wait_messages(1, 5)
    assert.are.same({ "jörg@bücher.de" }, got[1].rcpt_tos)
    assert.matches("SMTPUTF8", table.concat(got[1].mail_options or {}, " "), 1, true)
  end)

  it("refuse an invalid IDN in an explicit envelope with the field", function()
    local s = servers.aiosmtpd {}
    local c = assert(tr.connect { host = s.host, port = s.port, security = "none" })
    local r, err = c:send(base(), { envelope = { to = { "b@example.com", "x@☃.net" } } })
    assert.is_nil(r)
    assert.are.equal("input", err.kind)
    assert.are.equal("envelope.to[2]", err.field)
    c:close()
  end)
end)
end
