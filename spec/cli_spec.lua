-- The mailer command against a real SMTP server (python3-aiosmtpd), the
-- outbox, exit codes, and the progress bar under a pseudo-terminal.
local servers = require "support.servers"
local mime = require "support.mime"

local compat = require "support.compat"

-- the checkout's plain (not ASan) build for the Lua running the specs
local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS LUA_PATH='lua/?.lua;;' LUA_CPATH='" .. compat.build_cpath .. "' "
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Run bin/mailer with arguments; returns exit code, stdout, stderr.
local function run(args, extra_env)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ENV .. (extra_env or "") .. " " .. compat.lua .. " bin/mailer"
  for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
  local ok, how, code = compat.execute(cmd .. " >" .. out .. " 2>" .. err)
  local function slurp(n)
    local f = io.open(n, "rb")
    local s = f:read("*a")
    f:close()
    os.remove(n)
    return s
  end
  return how == "exit" and code or 128 + code, slurp(out), slurp(err)
end

local function tmpfile(content, suffix)
  local name = os.tmpname() .. (suffix or "")
  local f = assert(io.open(name, "wb"))
  f:write(content)
  f:close()
  return name
end

describe("mailer command", function()
  local srv
  setup(function()
    srv = servers.aiosmtpd { reject_rcpt = { ["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: no such user" } }
  end)
  teardown(function() servers.stop_all() end)

  it("sends a multipart message with a 20 MiB attachment", function()
    local big = os.tmpname()
    assert(os.execute("head -c 20971520 /dev/urandom > " .. big))
    local html = tmpfile("<p>hi <img src='cid:logo'></p>", ".html")
    local png = tmpfile("\137PNG\r\n\26\nfake", ".png")
    local code, out, err = run { "send", "--from", "Ann <ann@example.com>", "--to", "bob@example.com",
      "--cc", "Çé <ce@example.com>", "--bcc", "hidden@example.com", "--subject", "Größe 20 MiB",
      "--text", "see attachment", "--html-file", html, "--inline", png .. "=logo", "--attach", big,
      "--header", "X-Test: cli", "--server", "smtp://127.0.0.1:" .. srv.port, "--security", "none" }
    assert.equal(0, code, err)
    assert.matches("sent to bob@example.com, ce@example.com, hidden@example.com", out)
    local msgs = srv:wait_messages(1, 10)
    assert.equal(1, #msgs)
    assert.same({ "bob@example.com", "ce@example.com", "hidden@example.com" }, msgs[1].rcpt_tos)
    local r = mime.parse(msgs[1].data)
    assert.equal("Größe 20 MiB", r.subject)
    assert.equal("cli", r.headers["x-test"][1])
    assert.is_nil(r.headers.bcc)
    local f = io.open(big, "rb")
    local sum = mime.sha256(f:read("*a"))
    f:close()
    local last = r.parts[#r.parts]
    assert.equal(20971520, last.size)
    assert.equal(sum, last.sha256)
    os.remove(big); os.remove(html); os.remove(png)
  end)

  it("exits 65 for a bad address, before connecting", function()
    local code, _, err = run { "send", "--from", "ann@example.com", "--to", "not an address",
      "--text", "x", "--server", "smtp://127.0.0.1:" .. srv.port, "--security", "none" }
    assert.equal(65, code)
    assert.matches("input error: to%[1%]", err)
  end)

  it("exits 69 for a rejected recipient, with the server's reply", function()
    local code, _, err = run { "send", "--from", "ann@example.com", "--to", "nobody@example.com",
      "--text", "x", "--server", "smtp://127.0.0.1:" .. srv.port, "--security", "none" }
    assert.equal(69, code)
    assert.matches("550", err)
    assert.matches("5%.1%.1", err)
  end)

  it("exits 75 when the server is unreachable", function()
    local port = servers.free_port()
    local code, _, err = run { "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--text", "x", "--server", "smtp://127.0.0.1:" .. port, "--security", "none", "--timeout", "5" }
    assert.equal(75, code)
    assert.matches("network error", err)
  end)

  it("exits 64 on a bad command line", function()
    assert.equal(64, (run { "send", "--to", "b@example.com" }))
    assert.equal(64, (run { "frobnicate" }))
    assert.equal(64, (run { "send", "--from", "a@example.com", "--bogus" }))
    assert.equal(64, (run { "send", "--from", "a@example.com", "--server", "http://x" }))
  end)

  it("shows the redacted transcript with --trace", function()
    local code, _, err = run({ "send", "--from", "ann@example.com", "--to", "bob@example.com", "--text", "x",
      "--server", "smtp://127.0.0.1:" .. srv.port, "--security", "none", "--trace" })
    assert.equal(0, code, err)
    assert.matches("C: MAIL FROM:<ann@example.com>", err)
    assert.matches("S: 250", err)
  end)

  it("writes to ./outbox (or --outbox) without --server, and render prints the message", function()
    local dir = os.tmpname()
    os.remove(dir)
    local code, out = run { "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--subject", "to the outbox", "--text", "x", "--outbox", dir }
    assert.equal(0, code)
    local path = out:match("^(%S+%.eml)\n$")
    assert.truthy(path)
    local f = assert(io.open(path, "rb"))
    assert.equal("to the outbox", mime.parse(f:read("*a")).subject)
    f:close()
    os.execute("rm -rf " .. q(dir))
    local rcode, raw = run { "render", "--from", "ann@example.com", "--to", "bob@example.com", "--text", "hello" }
    assert.equal(0, rcode)
    assert.equal("hello", mime.parse(raw).parts[1].text)
  end)

  it("draws a progress bar on a terminal for messages over 1 MiB", function()
    local big = os.tmpname()
    assert(os.execute("head -c 3145728 /dev/urandom > " .. big))
    local log = os.tmpname()
    local inner = ENV .. compat.lua .. " bin/mailer send --from ann@example.com --to bob@example.com --text x" ..
      " --attach " .. big .. " --server smtp://127.0.0.1:" .. srv.port .. " --security none >/dev/null"
    -- script(1) gives the command a pseudo-terminal on stdin/stdout/stderr
    local ok = compat.execute("env -u LD_PRELOAD -u ASAN_OPTIONS script -qec " .. q(inner) .. " " .. log .. " >/dev/null 2>&1")
    assert.truthy(ok)
    local f = io.open(log, "rb")
    local typed = f:read("*a")
    f:close()
    os.remove(log); os.remove(big)
    assert.matches("%[#+%s*%] [%d.]+ [KM]iB / [%d.]+ MiB", typed)
    assert.matches("ETA", typed)
  end)
end)
