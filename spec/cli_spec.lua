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

-- The version the module says it is (as the command prints it).
local function mailer_version() return require("mailer")._VERSION end

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
    -- the total is the encoded message (3 MiB of file is 4 MiB in base64): said so
    assert.matches("%[#+%s*%] [%d.]+ [KM]iB / [%d.]+ MiB on the wire", typed)
    assert.matches("ETA", typed)
  end)

  it("exits 67 when some recipients were refused, and says so", function()
    local code, out, err = run { "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--to", "nobody@example.com", "--text", "x", "--server", "smtp://127.0.0.1:" .. srv.port,
      "--security", "none" }
    assert.equal(67, code, err)
    assert.matches("^sent to bob@example%.com: 250 ", out)
    assert.matches("mailer: rejected nobody@example.com: 550 5.1.1 <nobody@example.com>: no such user (permanent)\n",
                   err, 1, true)
    assert.matches("mailer: sent to 1 of 2 recipients, refused for 1 (exit 67)\n", err, 1, true)
  end)

  it("says plainly that a message written to the outbox was not sent", function()
    local dir = servers.mkdir("cli-outbox")
    local code, out, err = run { "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--text", "x", "--outbox", dir }
    assert.equal(0, code)
    local path = out:match("^(%S+%.eml)\n$")
    assert.truthy(path)
    assert.matches("mailer: not sent: without --server the message goes into the outbox (" .. path ..
                   "); to send it, give --server smtp://HOST (or smtps://HOST)\n", err, 1, true)
  end)

  it("answers a bad option with one line and a pointer to --help", function()
    local code, out, err = run { "send", "--from", "a@example.com", "--sever", "smtp://x" }
    assert.equal(64, code)
    assert.equal("", out)
    assert.equal("mailer: unknown option --sever (did you mean --server?)\n" ..
                 "Run 'mailer --help' for the commands and options.\n", err)
  end)

  it("--help names every option, every AUTH mechanism and --version; --version names the Lua", function()
    local code, help = run { "--help" }
    assert.equal(0, code)
    for _, name in ipairs(require("mailer.cli").option_names()) do
      assert.truthy(help:find("%-%-" .. name:gsub("%-", "%%-") .. "[^%w-]"), "--help lacks --" .. name)
    end
    local mechs = help:match("%-%-auth MECH(.-)\n  %-%-cafile")
    for _, mech in ipairs(require("mailer.smtp").options.auth) do
      assert.truthy(mechs:find(mech, 1, true), "--help lacks --auth " .. mech)
    end
    local vcode, version = run { "--version" }
    assert.equal(0, vcode)
    local jit = rawget(_G, "jit")
    assert.equal("mailer " .. mailer_version() .. " (" .. (jit and jit.version or _VERSION) .. ")\n", version)
  end)

  it("labels the envelope of --dry-run as the envelope", function()
    local code, out = run { "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--bcc", "hidden@example.com", "--text", "x", "--dry-run" }
    assert.equal(0, code)
    assert.matches("^envelope from: ann@example%.com\nenvelope to:   bob@example%.com, hidden@example%.com\n" ..
                   "%s+%(To, Cc and Bcc: the Bcc recipients are in no header%)\n", out)
    assert.is_nil(out:find("\nto:", 1, true))
    assert.matches("\nnothing was sent %(%-%-dry%-run%)\n$", out)
  end)

  it("suggests repeating --to for two addresses in one", function()
    local code, _, err = run { "send", "--from", "ann@example.com", "--to", "b@example.com, c@example.com",
      "--text", "x" }
    assert.equal(65, code)
    assert.matches("input error: to[1]: ", err, 1, true)
    assert.matches("(one address per --to: repeat --to for each one)\n", err, 1, true)
  end)

  describe("against a server with AUTH and no TLS", function()
    local plain
    setup(function()
      plain = servers.aiosmtpd { auth = { user = "ann", password = "secret" }, auth_require_tls = false,
        reject_rcpt = { ["nobody@example.com"] = "550 5.1.1 no such user", ["later@example.com"] = "451 4.3.0 try later" } }
    end)

    it("refuses AUTH in clear text, naming --allow-plaintext-auth, and sends with it", function()
      local args = { "send", "--from", "ann@example.com", "--to", "bob@example.com", "--text", "x",
        "--server", "smtp://127.0.0.1:" .. plain.port, "--security", "none", "--user", "ann" }
      local code, _, err = run(args, "MAILER_PASSWORD=secret")
      assert.equal(69, code)
      assert.matches("(use TLS, or --allow-plaintext-auth to send them in clear text)", err, 1, true)
      assert.is_nil(err:find("allow_plaintext_auth", 1, true))
      args[#args + 1] = "--allow-plaintext-auth"
      code, _, err = run(args, "MAILER_PASSWORD=secret")
      assert.equal(0, code, err)
      local got = plain:wait_messages(1, 5)
      assert.equal("ann", got[1].auth)
    end)

    it("names --security when STARTTLS is required but not offered", function()
      local code, _, err = run { "send", "--from", "ann@example.com", "--to", "bob@example.com", "--text", "x",
        "--server", "smtp://127.0.0.1:" .. plain.port }
      assert.equal(69, code)
      assert.matches("does not offer STARTTLS, and --security starttls requires it (--security starttls-optional " ..
                     "goes on in clear text when it is missing, --security none never uses TLS)", err, 1, true)
    end)

    it("exits 75 when every recipient was refused and one only for now, listing each", function()
      local code, _, err = run { "send", "--from", "ann@example.com", "--to", "nobody@example.com",
        "--to", "later@example.com", "--text", "x", "--server", "smtp://127.0.0.1:" .. plain.port,
        "--security", "none" }
      assert.equal(75, code)
      assert.matches("mailer: rejected nobody@example.com: 550 5.1.1 no such user (permanent)\n", err, 1, true)
      assert.matches("mailer: rejected later@example.com: 451 4.3.0 try later (temporary: a later attempt may succeed)\n",
                     err, 1, true)
      assert.matches("all recipients were rejected, 1 of 2 only for now", err, 1, true)
    end)
  end)

  it("--insecure skips the certificate check the error suggests it for", function()
    local tls = servers.aiosmtpd { tls = "starttls", cert = "good" }   -- a throwaway CA's certificate
    local args = { "send", "--from", "ann@example.com", "--to", "bob@example.com", "--text", "x",
      "--server", "smtp://127.0.0.1:" .. tls.port }
    local code, _, err = run(args)
    assert.equal(69, code)
    assert.matches("tls error: .*certificate verification", err)
    assert.matches("(--cafile FILE trusts the CA that signed it; --insecure skips the check, " ..
                   "for a throwaway test server only)", err, 1, true)
    args[#args + 1] = "--insecure"
    code, _, err = run(args)
    assert.equal(0, code, err)
    local got = tls:wait_messages(1, 5)
    assert.is_true(got[1].tls)
  end)
end)
