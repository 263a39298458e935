-- DKIM signatures checked by two independent verifiers, offline:
-- python3-dkim (dkim.verify with a dnsfunc serving our test public key)
-- and OpenDKIM (opendkim -t with TestPublicKeys, from Debian's opendkim;
-- opendkim-testmsg cannot verify without live DNS). RSA and Ed25519, both
-- canonicalizations, non-ASCII headers, every attachment kind, a large
-- file attachment in bounded memory, per-send signing through a server;
-- a message changed after signing must fail.
local mailer = require "mailer"
local servers = require "support.servers"
local compat = require "support.compat"

local PY = "env -u LD_PRELOAD -u ASAN_OPTIONS /usr/bin/python3"
local under_asan = os.getenv("MAILER_UNDER_ASAN") ~= nil

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function run(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD -u ASAN_OPTIONS /bin/sh -c " .. sh_quote(cmd .. " 2>&1")))
  local out = p:read("*a")
  p:close()
  return out
end

local function writefile(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
end

-- Verifies each "keyfile msgfile" pair given on stdin with both verifiers;
-- prints "<python> <opendkim>" per message (True/False, pass/fail/none).
local VERIFY = [[
import base64, os, subprocess, sys, tempfile
import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
def record(keyfile):
    key = serialization.load_pem_private_key(open(keyfile, 'rb').read(), None)
    pub = key.public_key()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
tmp = tempfile.mkdtemp()
for line in sys.stdin:
    keyfile, msgfile, name = line.split()
    rec = record(keyfile)
    data = open(msgfile, 'rb').read()
    py = dkim.verify(data, dnsfunc=lambda n, timeout=5: rec)
    od = "none"
    if os.path.exists("/usr/sbin/opendkim"):
        with open(os.path.join(tmp, "keys"), "wb") as f:
            f.write(name.encode() + b" " + rec + b"\n")
        with open(os.path.join(tmp, "conf"), "w") as f:
            f.write("Mode v\nSyslog no\nTestPublicKeys %s\n" % os.path.join(tmp, "keys"))
        r = subprocess.run(["/usr/sbin/opendkim", "-x", os.path.join(tmp, "conf"), "-t", msgfile],
                           capture_output=True, text=True)
        out = r.stdout + r.stderr
        od = "pass" if "verification (s=" in out and "succeeded" in out else "fail"
    print(py, od, flush=True)
]]

local dir, keys

-- Verify a list of {key=, raw=} -> list of {python=bool, opendkim=...}.
local function verify(list)
  local script = dir .. "/verify.py"
  writefile(script, VERIFY)
  local input = {}
  for i, item in ipairs(list) do
    local path = item.path
    if not path then
      path = dir .. "/msg-" .. i .. ".eml"
      writefile(path, item.raw)
    end
    input[#input + 1] = item.key .. " " .. path .. " " .. (item.selector or "sel") .. "._domainkey." ..
                        (item.domain or "example.com")
  end
  writefile(dir .. "/verify.in", table.concat(input, "\n") .. "\n")
  local out = run(PY .. " " .. sh_quote(script) .. " < " .. sh_quote(dir .. "/verify.in"))
  local res = {}
  for py, od in out:gmatch("(%a+) (%a+)\n") do
    res[#res + 1] = { python = py == "True", opendkim = od }
  end
  assert(#res == #list, "verifier output: " .. out)
  return res
end

local function base_message(extra)
  local t = {
    from = "Alice Ünal <alice@example.com>", to = { "Bob Ørsted <bob@example.org>", "carol@example.net" },
    cc = "Dan <dan@example.net>", subject = "Grüße 你好 — a DKIM test with a long subject that folds",
    text = "Hello  Bob,\n\nline with trailing blanks   \n.\nthe end\n\n\n",
    html = "<p>Hello <b>Bob</b></p>",
    headers = { ["X-Campaign"] = "q4", ["List-Unsubscribe"] = "<mailto:u@example.com>" },
    attachments = {
      { data = "a,b\n1,2\n", filename = "Übersicht.csv" },
      { path = dir .. "/file.bin" },
      { source = coroutine.wrap(function()
          for i = 1, 50 do coroutine.yield(("chunk %d "):format(i):rep(100)) end
        end), filename = "produced.txt" },
    },
  }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

describe("DKIM", function()
  setup(function()
    dir = servers.mkdir("dkim")
    keys = { rsa = dir .. "/rsa.pem", ed25519 = dir .. "/ed25519.pem" }
    run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. sh_quote(keys.rsa))
    run("openssl genpkey -algorithm ed25519 -out " .. sh_quote(keys.ed25519))
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    writefile(dir .. "/file.bin", table.concat(bytes):rep(400))
  end)
  teardown(function() servers.stop_all() end)

  it("verifies with both verifiers: RSA and Ed25519, every canonicalization; changes break it", function()
    local list, names = {}, {}
    for _, alg in ipairs { "rsa", "ed25519" } do
      for _, c in ipairs { "relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed" } do
        local msg = assert(mailer.message(base_message {
          dkim = { domain = "example.com", selector = "sel", key = keys[alg], canonicalization = c },
        }))
        local raw = assert(msg:render())
        assert.are.equal(#raw, msg:size() or #raw)
        assert.matches("^DKIM%-Signature: v=1; a=" .. (alg == "rsa" and "rsa" or "ed25519") .. "%-sha256; c=" ..
                       c:gsub("%p", "%%%0") .. ";", raw)
        assert.is_nil(raw:match("^DKIM%-Signature:.-\r\n[^ ]"):find("l=", 1, true))
        list[#list + 1] = { key = keys[alg], raw = raw }
        names[#names + 1] = alg .. " " .. c
        -- changed after signing: a body octet, then a signed header
        list[#list + 1] = { key = keys[alg], raw = raw:gsub("the end", "the End", 1) }
        names[#names + 1] = alg .. " " .. c .. " (body changed)"
        list[#list + 1] = { key = keys[alg], raw = raw:gsub("\r\nTo: ", "\r\nTo: eve@example.com, ", 1) }
        names[#names + 1] = alg .. " " .. c .. " (To changed)"
      end
    end
    local res = verify(list)
    for i, r in ipairs(res) do
      local changed = names[i]:find("changed", 1, true) ~= nil
      assert.are.equal(not changed, r.python, "python3-dkim: " .. names[i])
      assert.are.equal(changed and "fail" or "pass", r.opendkim, "opendkim: " .. names[i])
    end
  end)

  it("renders the same bytes every time, source attachments included (spooled once)", function()
    local msg = assert(mailer.message(base_message {
      dkim = { domain = "example.com", selector = "sel", key = keys.ed25519 } }))
    local a = assert(msg:render())
    local parts = {}
    for c in msg:chunks(1000) do parts[#parts + 1] = c end
    assert.are.equal(a, table.concat(parts))
    assert.are.equal(a, assert(msg:render()))
    assert.is_true(verify { { key = keys.ed25519, raw = a } }[1].python)
  end)

  it("signs the headers RFC 6376 recommends, From once more, and given headers exactly", function()
    local msg = assert(mailer.message(base_message {
      dkim = { domain = "example.com", selector = "sel", key = keys.rsa } }))
    local sig = msg:render():match("^DKIM%-Signature:(.-)\r\n[^ ]"):gsub("\r\n ", "")
    local h = sig:match("h=([^;]+);"):gsub("%s", "")
    assert.are.equal("date:from:to:cc:subject:message-id:list-unsubscribe:mime-version:content-type:from", h)
    msg = assert(mailer.message(base_message {
      dkim = { domain = "example.com", selector = "sel", key = keys.rsa, headers = { "From", "Subject", "X-Campaign" } } }))
    local raw = msg:render()
    assert.matches("h=From:Subject:X%-Campaign;", raw:match("^DKIM%-Signature:(.-)\r\n[^ ]"):gsub("\r\n ", ""))
    assert.is_true(verify { { key = keys.rsa, raw = raw } }[1].python)
  end)

  it("gives input errors for bad DKIM options", function()
    local cases = {
      { { domain = "example.com", selector = "sel", key = dir .. "/missing.pem" }, "dkim.key" },
      { { domain = "example.com", selector = "sel", key = "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n" }, "dkim.key" },
      { { domain = "exa mple.com", selector = "sel", key = keys.rsa }, "dkim.domain" },
      { { domain = "example.com", key = keys.rsa }, "dkim.selector" },
      { { domain = "example.com", selector = "sel", key = keys.rsa, canonicalization = "loose" }, "dkim.canonicalization" },
      { { domain = "example.com", selector = "sel", key = keys.rsa, algorithm = "ed25519-sha256" }, "dkim.key" },
      { { domain = "example.com", selector = "sel", key = keys.rsa, headers = { "Subject" } }, "dkim.headers" },
      { { domain = "example.com", selector = "sel", key = keys.rsa, l = 10 }, "dkim.l" },
    }
    for _, c in ipairs(cases) do
      local msg, err = mailer.message { from = "a@example.com", to = "b@example.com", text = "x", dkim = c[1] }
      assert.is_nil(msg)
      assert.are.equal("input", err.kind)
      assert.are.equal(c[2], err.field, tostring(err))
    end
  end)

  it("publishes the DNS record of a key", function()
    local rec = assert(mailer.dkim_dns_record(keys.ed25519))
    assert.matches("^v=DKIM1; k=ed25519; p=[%w+/]+=*$", rec)
    local pub = run("openssl pkey -in " .. sh_quote(keys.rsa) .. " -pubout"):gsub("%-%-%-%-%-[^\n]*%-%-%-%-%-", ""):gsub("%s", "")
    assert.are.equal("v=DKIM1; k=rsa; p=" .. pub, mailer.dkim_dns_record(keys.rsa))
  end)

  it("signs per send: what the server received verifies", function()
    local srv = servers.aiosmtpd {}
    local conn = assert(mailer.connect { host = "127.0.0.1", port = srv.port, security = "none", timeout = 10 })
    local msg = assert(mailer.message(base_message()))
    local r = assert(conn:send(msg, { dkim = { domain = "example.com", selector = "sel", key = keys.rsa,
                                               canonicalization = "simple/simple" } }))
    assert.are.equal(250, r.code)
    local _, err = conn:send(msg, { dkim = { domain = "example.com", selector = "sel", key = "nope" } })
    assert.are.equal("dkim.key", err.field)
    conn:close()
    local got = srv:wait_messages(1)
    local res = verify { { key = keys.rsa, raw = got[1].data } }
    assert.is_true(res[1].python)
    assert.are.equal("pass", res[1].opendkim)
  end)

  it("signs a large file attachment in bounded memory", function()
    local mib = under_asan and 4 or 16
    local big = dir .. "/big.bin"
    run("head -c " .. mib .. "M /dev/urandom > " .. sh_quote(big))
    local out = dir .. "/big.eml"
    local script = dir .. "/big.lua"
    writefile(script, ([[
      local mailer = require "mailer"
      local clock = os.clock
      local msg = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "big",
        text = "see attachment", attachments = { { path = %q } },
        dkim = { domain = "example.com", selector = "sel", key = %q } })
      local f = assert(io.open(%q, "wb"))
      local t0 = clock()
      for c in msg:chunks(65536) do f:write(c) end
      f:close()
      local t1 = clock()
      local plain = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "big",
        text = "see attachment", attachments = { { path = %q } } })
      for _ in plain:chunks(65536) do end
      local t2 = clock()
      local hwm = io.open("/proc/self/status"):read("*a"):match("VmHWM:%%s*(%%d+)")
      print(("RSS_KB %%d SIGNED_S %%.3f PLAIN_S %%.3f"):format(tonumber(hwm), t1 - t0, t2 - t1))
    ]]):format(big, keys.rsa, out, big))
    -- the child keeps this process's environment (under ASan: the runtime
    -- preloaded for the instrumented module)
    local p = assert(io.popen("LUA_PATH=" .. sh_quote(package.path) .. " LUA_CPATH=" .. sh_quote(package.cpath) ..
                              " " .. compat.lua .. " " .. sh_quote(script) .. " 2>&1"))
    local res = p:read("*a")
    p:close()
    local rss, signed, plain = res:match("RSS_KB (%d+) SIGNED_S ([%d.]+) PLAIN_S ([%d.]+)")
    assert(rss, res)
    print(("# DKIM, %d MiB file attachment: peak RSS %.1f MiB; signed render %.2f s, unsigned %.2f s"):format(
      mib, tonumber(rss) / 1024, tonumber(signed), tonumber(plain)))
    if not under_asan then   -- ASan's shadow memory and quarantine inflate RSS
      assert.is_true(tonumber(rss) < 40 * 1024, "peak RSS " .. rss .. " KiB")
    end
    local v = verify { { key = keys.rsa, path = out } }
    assert.is_true(v[1].python)
    assert.are.equal("pass", v[1].opendkim)
  end)
end)
