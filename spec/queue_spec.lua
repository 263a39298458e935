-- mailer.queue (store and forward) against real servers: aiosmtpd down then
-- up, scripted servers that answer 451 / 550 / nothing, a runner killed
-- with SIGKILL in the middle of a 20 MiB body, two runners on the same 50
-- entries, corrupt and unreadable entries, and the command line.
local mailer = require "mailer"
local servers = require "support.servers"
local compat = require "support.compat"
local dkjson = require "dkjson"
local core = mailer.core

local has_socket, socket = pcall(require, "socket")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sleep(s)
  if has_socket then socket.sleep(s) else os.execute("sleep " .. s) end
end

local function now()
  return core.q_now()
end

local function sh(cmd)
  local ok = compat.execute(cmd)
  return ok == true
end

local function readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function writefile(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Is process pid alive (zombies count as dead)?
local function alive(pid)
  local stat = readfile("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

local function wait_until(cond, timeout, what)
  local deadline = now() + (timeout or 10)
  while not cond() do
    if now() > deadline then error("timed out waiting for " .. (what or "a condition"), 2) end
    sleep(0.01)
  end
end

-- Start `lua -e code` in the background with this process's module paths
-- (and, under ASan, its preloaded runtime); returns the pid.
local function spawn_lua(code, out)
  local cmd = ("env LUA_PATH=%s LUA_CPATH=%s %s -e %s >%s 2>&1 </dev/null & echo $!"):format(
    q(package.path), q(package.cpath), compat.lua, q(code), q(out))
  local p = assert(io.popen(cmd, "r"))
  local pid = tonumber((p:read("*a"):match("%d+")))
  p:close()
  return assert(pid, "could not start a runner")
end

-- The entry ids of a queue directory (its visible subdirectories).
local function entry_names(dir)
  local out = {}
  for _, e in ipairs(core.q_scan(dir) or {}) do
    if e.name:sub(1, 1) ~= "." then out[#out + 1] = e.name end
  end
  table.sort(out)
  return out
end

local function meta_of(dir, id)
  return assert(dkjson.decode(assert(readfile(dir .. "/" .. id .. "/meta.json"))))
end

local GREET = { send = "220 mx.test ESMTP\r\n" }
local EHLO_REPLY = "250-mx.test\r\n250 ENHANCEDSTATUSCODES\r\n"

-- A scripted session up to the 354 (no extensions: one command at a time).
local function session(...)
  local steps = { GREET, { expect = "EHLO" }, { send = EHLO_REPLY },
    { expect = "MAIL" }, { send = "250 2.1.0 ok\r\n" },
    { expect = "RCPT" }, { send = "250 2.1.5 ok\r\n" },
    { expect = "DATA" }, { send = "354 go ahead\r\n" } }
  for _, s in ipairs { ... } do steps[#steps + 1] = s end
  return steps
end

local ACCEPT = { { expect_data = true }, { send = "250 2.0.0 queued\r\n" },
                 { expect = "QUIT" }, { send = "221 2.0.0 bye\r\n" } }

local function accepted_session()
  return session(ACCEPT[1], ACCEPT[2], ACCEPT[3], ACCEPT[4])
end

-- The DATA body the client sent on a scripted connection, dot-unstuffed.
local function data_body(transcript)
  local s = transcript:find("DATA\r\n", 1, true)
  local e = transcript:find("\r\n.\r\n", s, true)
  if not s or not e then return nil end
  local body = transcript:sub(s + 6, e + 1)
  return (("\n" .. body):gsub("\n%.%.", "\n."):sub(2))
end

local function message(i, extra)
  local t = { from = "alice@example.com", to = "bob@example.com",
              subject = "queued " .. i, text = "message number " .. i .. "\n" }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

describe("queue", function()
  teardown(function() servers.stop_all() end)

  it("adds durably: message and metadata written, fsynced, renamed into place, the directory fsynced", function()
    local dir = servers.mkdir("q") .. "/spool"
    local qq = mailer.queue { dir = dir, server = { host = "127.0.0.1", port = 2525, security = "none",
      username = "alice", password = "s3cret-pw", allow_plaintext_auth = true } }
    local msg = assert(mailer.message(message(1, { bcc = "hidden@example.com" })))
    local id = assert(qq:add(msg))
    assert.are.same({ id }, entry_names(dir))
    assert.are.equal(assert(msg:render()), readfile(dir .. "/" .. id .. "/message.eml"))
    local m = meta_of(dir, id)
    assert.are.equal("alice@example.com", m.from)
    assert.are.same({ "bob@example.com", "hidden@example.com" }, m.to)
    assert.are.same({ host = "127.0.0.1", port = 2525, security = "none", allow_plaintext_auth = true }, m.server)
    assert.are.equal("queued", m.state)
    -- credentials are never written anywhere in the queue
    for _, name in ipairs { "message.eml", "meta.json" } do
      local data = readfile(dir .. "/" .. id .. "/" .. name)
      assert.is_nil(data:find("s3cret", 1, true))
      assert.is_nil(data:find("alice\"", 1, true))
    end
    -- the system calls, in order (strace): each file fsynced, the entry
    -- directory fsynced, renamed into place, the queue directory fsynced
    if not sh("command -v strace >/dev/null 2>&1") then
      pending("strace is not installed")
      return
    end
    local log = servers.tmpdir() .. "/strace-add.log"
    local code = ("package.path=%s package.cpath=%s assert(require('mailer').queue{dir=%s}:add{from='a@example.com', to='b@example.com', text='x'})")
      :format(("%q"):format(package.path), ("%q"):format(package.cpath), ("%q"):format(dir))
    -- strace itself runs without the sanitizer runtime; the traced Lua
    -- gets it back (-E) when this run has it
    -- (LeakSanitizer cannot run under ptrace: leaks are checked elsewhere)
    local keep = ""
    if os.getenv("LD_PRELOAD") then
      keep = " -E " .. q("LD_PRELOAD=" .. os.getenv("LD_PRELOAD")) .. " -E ASAN_OPTIONS=detect_leaks=0"
    end
    if not sh(("env -u LD_PRELOAD -u ASAN_OPTIONS strace -f%s -o %s -e trace=openat,fsync,rename %s -e %s >/dev/null 2>&1")
        :format(keep, q(log), compat.lua, q(code)))
      or not readfile(log) then
      pending("strace cannot trace here")
      return
    end
    local fds, events = {}, {}
    for line in readfile(log):gmatch("[^\n]+") do
      local path, fd = line:match('openat%(AT_FDCWD, "([^"]+)".-%) = (%d+)$')
      if path then fds[fd] = path end
      local sfd = line:match("fsync%((%d+)%) += 0")
      if sfd then events[#events + 1] = "fsync " .. tostring(fds[sfd]) end
      local from, to = line:match('rename%("([^"]+)", "([^"]+)"%) += 0')
      if from then events[#events + 1] = "rename " .. from .. " " .. to end
    end
    local tmp, final
    for _, e in ipairs(events) do
      tmp, final = e:match("^rename (%S+/%.tmp%-%S+) (%S+)$")
      if tmp then break end
    end
    assert.truthy(tmp, table.concat(events, "\n"))
    local function at(ev)
      for i, e in ipairs(events) do if e == ev then return i end end
      error("no '" .. ev .. "' in:\n" .. table.concat(events, "\n"))
    end
    local r = at("rename " .. tmp .. " " .. final)
    assert.is_true(at("fsync " .. tmp .. "/message.eml") < r)
    assert.is_true(at("fsync " .. tmp .. "/meta.json") < r)
    assert.is_true(at("fsync " .. tmp) < r)
    assert.is_true(at("fsync " .. dir) > r)
  end)

  it("aiosmtpd down, then up: deferred, then delivered exactly once", function()
    local port = servers.free_port()
    local dir = servers.mkdir("q")
    local qq = mailer.queue { dir = dir, delays = { 0 },
                              server = { host = "127.0.0.1", port = port, security = "none", timeout = 5 } }
    local msg = assert(mailer.message(message(1)))
    local id = assert(qq:add(msg))
    local st = assert(qq:run())
    assert.are.same({ sent = 0, deferred = 1, failed = 0, busy = 0, corrupt = 0 }, st)
    local e = qq:list()[1]
    assert.are.equal(id, e.id)
    assert.are.equal("deferred", e.state)
    assert.are.equal(1, e.attempts)
    assert.are.equal("network", e.last_error.kind)
    assert.is_true(e.last_error.temporary)
    local s = servers.aiosmtpd { port = port }
    st = assert(qq:run())
    assert.are.same({ sent = 1, deferred = 0, failed = 0, busy = 0, corrupt = 0 }, st)
    assert.are.same({}, qq:list())
    assert.are.same({}, entry_names(dir))
    st = assert(qq:run())
    assert.are.equal(0, st.sent)
    local msgs = s:wait_messages(1, 5)
    sleep(0.2)
    msgs = s:messages()
    assert.are.equal(1, #msgs)
    assert.are.equal(assert(msg:render()), msgs[1].data)
    assert.are.same({ "bob@example.com" }, msgs[1].rcpt_tos)
    s:stop()
  end)

  it("a server that answers 451 twice, then 250: three attempts at growing delays, one delivery", function()
    local h = servers.hostile { linger = 0.3, scripts = {
      session({ expect_data = true }, { send = "451 4.3.0 try again later\r\n" }),
      session({ expect_data = true }, { send = "451 4.3.0 still busy\r\n" }),
      accepted_session() } }
    local T = 1.7e9
    local qq = mailer.queue { dir = servers.mkdir("q"), delays = { 60, 300 }, clock = function() return T end,
                              server = { host = h.host, port = h.port, security = "none", timeout = 5 } }
    local msg = assert(mailer.message(message(2)))
    local id = assert(qq:add(msg))
    assert.are.equal(1, qq:run().deferred)
    local e = qq:list()[1]
    assert.are.same({ "deferred", 1, T + 60, 451, "4.3.0" },
                    { e.state, e.attempts, e.next_attempt, e.last_error.code, e.last_error.enhanced })
    assert.matches("try again later", e.last_error.message)
    T = T + 59   -- not due yet: nothing is tried
    assert.are.same({ sent = 0, deferred = 0, failed = 0, busy = 0, corrupt = 0 }, qq:run())
    T = T + 1
    assert.are.equal(1, qq:run().deferred)
    e = qq:list()[1]
    assert.are.same({ 2, T + 300 }, { e.attempts, e.next_attempt })
    T = T + 300
    assert.are.equal(1, qq:run().sent)
    assert.are.same({}, qq:list())
    assert.is_true(h:wait(5))
    assert.are.equal(3, h:status().connections)
    for i = 1, 3 do assert.are.equal(assert(msg:render()), data_body(h:received(i)), "attempt " .. i) end
    assert.is_string(id)
  end)

  it("550 for one of two recipients: the other gets it, the refused one is never tried again", function()
    local s = servers.aiosmtpd { extensions = { "PIPELINING", "ENHANCEDSTATUSCODES" },
      reject_rcpt = { ["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: no such user" } }
    local qq = mailer.queue { dir = servers.mkdir("q"), delays = { 0 },
                              server = { host = s.host, port = s.port, security = "none" } }
    local id = assert(qq:add(message(3, { to = { "bob@example.com", "nobody@example.com" } })))
    assert.are.same({ sent = 0, deferred = 0, failed = 1, busy = 0, corrupt = 0 }, qq:run())
    local e = qq:list()[1]
    assert.are.equal("failed", e.state)
    assert.are.same({ "bob@example.com" }, e.delivered)
    assert.are.same({}, e.to)
    assert.are.equal(1, #e.refused)
    assert.are.same({ "nobody@example.com", 550, "5.1.1", false },
                    { e.refused[1].address, e.refused[1].code, e.refused[1].enhanced, e.refused[1].temporary })
    assert.are.equal(550, e.last_error.code)
    assert.are.same({ sent = 0, deferred = 0, failed = 0, busy = 0, corrupt = 0 }, qq:run())
    local msgs = s:wait_messages(1, 5)
    sleep(0.2)
    msgs = s:messages()
    assert.are.equal(1, #msgs)
    assert.are.same({ "bob@example.com" }, msgs[1].rcpt_tos)
    assert.is_true(qq:remove(id))
    s:stop()
  end)

  it("retries only the recipients refused with 4xx, drops the 5xx ones", function()
    local rcpt_steps = function(...)
      local steps = { GREET, { expect = "EHLO" }, { send = EHLO_REPLY },
                      { expect = "MAIL" }, { send = "250 2.1.0 ok\r\n" } }
      for _, reply in ipairs { ... } do
        steps[#steps + 1] = { expect = "RCPT" }
        steps[#steps + 1] = { send = reply }
      end
      for _, s in ipairs { { expect = "DATA" }, { send = "354 go\r\n" }, ACCEPT[1], ACCEPT[2], ACCEPT[3], ACCEPT[4] } do
        steps[#steps + 1] = s
      end
      return steps
    end
    local h = servers.hostile { linger = 0.3, scripts = {
      rcpt_steps("250 2.1.5 ok\r\n", "550 5.1.1 no such user\r\n", "451 4.7.1 greylisted, come back later\r\n"),
      rcpt_steps("250 2.1.5 ok\r\n") } }
    local qq = mailer.queue { dir = servers.mkdir("q"), delays = { 0 },
                              server = { host = h.host, port = h.port, security = "none", timeout = 5 } }
    assert(qq:add(message(4, { to = { "bob@example.com", "nobody@example.com", "later@example.com" } })))
    assert.are.equal(1, qq:run().deferred)
    local e = qq:list()[1]
    assert.are.same({ "later@example.com" }, e.to)
    assert.are.same({ "bob@example.com" }, e.delivered)
    assert.are.equal("nobody@example.com", e.refused[1].address)
    assert.are.same({ 451, "4.7.1" }, { e.last_error.code, e.last_error.enhanced })
    assert.are.equal(1, qq:run().failed)   -- later got it; nobody's 550 keeps the entry as failed
    e = qq:list()[1]
    assert.are.same({ "bob@example.com", "later@example.com" }, e.delivered)
    assert.are.equal("failed", e.state)
    assert.is_true(h:wait(5))
    local second = h:received(2)
    assert.matches("RCPT TO:<later@example.com>", second, 1, true)
    assert.is_nil(second:find("RCPT TO:<nobody", 1, true))
    assert.is_nil(second:find("RCPT TO:<bob", 1, true))
  end)

  it("marks a message whose outcome is unknown (dropped after the final dot), and sends it again", function()
    local h = servers.hostile { linger = 0.3, scripts = {
      session({ expect_data = true }, { close = "now" }),
      accepted_session() } }
    local qq = mailer.queue { dir = servers.mkdir("q"), delays = { 0 },
                              server = { host = h.host, port = h.port, security = "none", timeout = 5 } }
    local msg = assert(mailer.message(message(5)))
    assert(qq:add(msg))
    assert.are.equal(1, qq:run().deferred)
    local e = qq:list()[1]
    assert.is_true(e.outcome_unknown)
    assert.are.equal("deferred", e.state)
    assert.matches("outcome unknown", e.last_error.message)
    assert.are.equal(1, qq:run().sent)
    assert.is_true(h:wait(5))
    assert.are.equal(assert(msg:render()), data_body(h:received(2)))
  end)

  it("fails at once on a 5xx for the message; retry makes it due again; max_age ends deferral", function()
    local s = servers.aiosmtpd { extensions = { "PIPELINING", "ENHANCEDSTATUSCODES" },
                                 data_reply = "554 5.6.0 content refused" }
    local qq = mailer.queue { dir = servers.mkdir("q"), delays = { 0 },
                              server = { host = s.host, port = s.port, security = "none" } }
    local id = assert(qq:add(message(6)))
    assert.are.equal(1, qq:run().failed)
    local e = qq:list()[1]
    assert.are.same({ "failed", 1, 554, "5.6.0", nil },
                    { e.state, e.attempts, e.last_error.code, e.last_error.enhanced, e.next_attempt })
    assert.are.equal(0, qq:run().failed)       -- failed entries stay put
    assert.is_true(qq:retry(id))
    assert.are.equal("queued", qq:list()[1].state)
    assert.are.equal(1, qq:run().failed)
    assert.are.equal(2, qq:list()[1].attempts)
    local _, err = qq:retry("20000101T000000000000Z-000000000000")
    assert.are.equal("input", err.kind)
    s:stop()

    -- max_age: a temporary failure of an entry older than that fails it
    local down = mailer.queue { dir = servers.mkdir("q"), server = { host = "127.0.0.1",
      port = servers.free_port(), security = "none", timeout = 5 } }
    assert(down:add(message(7)))
    assert.are.equal(1, down:run { max_age = 0 }.failed)
    e = down:list()[1]
    assert.are.same({ "failed", true, "network" }, { e.state, e.expired, e.last_error.kind })
  end)

  it("uses the credentials of the server table it is given, and never stores them", function()
    local s = servers.aiosmtpd { auth = { user = "alice", password = "s3cret-pw" }, auth_require_tls = false,
                                 auth_required = true }
    local dir = servers.mkdir("q")
    local server = { host = s.host, port = s.port, security = "none", username = "alice",
                     password = "s3cret-pw", allow_plaintext_auth = true }
    assert(mailer.queue { dir = dir, server = server }:add(message(8)))
    local id = entry_names(dir)[1]
    assert.is_nil(readfile(dir .. "/" .. id .. "/meta.json"):find("s3cret", 1, true))
    -- a runner without credentials: refused (the set-up, not the message: deferred)
    local bare = mailer.queue { dir = dir, delays = { 0 } }
    assert.are.equal(1, bare:run().deferred)
    -- a runner given the server with its password (same host and port)
    assert.are.equal(1, bare:run { server = server }.sent)
    local msgs = s:wait_messages(1, 5)
    assert.are.equal("alice", msgs[1].auth)
    s:stop()
  end)

  it("leaves entries added without a server alone until a run is given one", function()
    local s = servers.aiosmtpd {}
    local qq = mailer.queue { dir = servers.mkdir("q") }
    local id = assert(qq:add(message(15)))
    local st = assert(qq:run())
    assert.are.same({ 0, 0, 0, 1, "server" }, { st.sent, st.deferred, st.failed, #st.errors, st.errors[1].field })
    local e = qq:list()[1]
    assert.are.same({ id, "queued", 0 }, { e.id, e.state, e.attempts })
    assert.is_nil(e.server)
    assert.are.equal(1, qq:run { server = { host = s.host, port = s.port, security = "none" } }.sent)
    assert.are.equal(1, #s:wait_messages(1, 5))
    s:stop()
  end)

  it("never lets two runs send an entry at once: a claimed entry is skipped, not sent", function()
    local s = servers.aiosmtpd {}
    local dir = servers.mkdir("q")
    local qq = mailer.queue { dir = dir, server = { host = s.host, port = s.port, security = "none" } }
    local a = assert(qq:add(message(9)))
    assert(qq:add(message(10)))
    local held = assert(core.q_lock(dir .. "/" .. a))   -- as a runner sending it would
    assert.are.same({ sent = 1, deferred = 0, failed = 0, busy = 1, corrupt = 0 }, qq:run())
    local _, err = qq:remove(a)
    assert.matches("being sent", err.message)
    held:unlock()
    assert.are.equal(1, qq:run().sent)
    assert.are.equal(2, #s:wait_messages(2, 5))
    s:stop()
  end)

  it("kill -9 of a runner in the middle of a 20 MiB body: the next runner delivers it whole", function()
    local h = servers.hostile { linger = 0.2, timeout = 30, scripts = {
      -- the first runner's body: not read for a while, so it is killed with
      -- megabytes of the body on the way (in the socket buffers), then all
      -- that arrived is read
      session({ sleep = 2.5 }, { read_all = true, timeout = 30 }),
      accepted_session() } }
    local dir = servers.mkdir("q")
    local big = servers.tmpdir() .. "/queue-20MiB.bin"
    assert(sh("head -c 20971520 /dev/urandom > " .. q(big)))
    local qq = mailer.queue { dir = dir, server = { host = h.host, port = h.port, security = "none", timeout = 20 } }
    local id = assert(qq:add(message(11, { attachments = { { path = big } } })))
    local stored = readfile(dir .. "/" .. id .. "/message.eml")
    assert.is_true(#stored > 20971520)
    local out = servers.tmpdir() .. "/runner1.out"
    local pid = spawn_lua(("require('mailer').queue{ dir = %q }:run()"):format(dir), out)
    wait_until(function()
      return (readfile(h.dir .. "/events.log") or ""):find('"sleep"', 1, true) ~= nil
    end, 10, "the runner's DATA")
    sleep(0.3)   -- the runner writes the body until the buffers are full
    assert.is_true(alive(pid), readfile(out))
    assert(sh("kill -9 " .. pid))
    wait_until(function() return not alive(pid) end, 5, "the killed runner to go")
    -- the entry is still there, unchanged, and not locked
    assert.are.same({ id }, entry_names(dir))
    assert.are.equal(0, meta_of(dir, id).attempts)
    local st = assert(qq:run())
    assert.are.same({ sent = 1, deferred = 0, failed = 0, busy = 0, corrupt = 0 }, st)
    assert.is_true(h:wait(10))
    -- what the server got from the killed runner: part of the body, no end
    local first = h:received(1)
    local body_start = first:find("DATA\r\n", 1, true)
    assert.truthy(body_start)
    local got = #first - body_start - 5
    assert.is_true(got > 65536 and got < #stored, "body octets before the kill: " .. got)
    assert.is_nil(first:find("\r\n.\r\n", body_start, true))
    io.stderr:write(("\n  killed after %d of %d body octets reached the server\n"):format(got, #stored))
    assert.is_true(stored == data_body(h:received(2)), "the message arrived whole")
    assert.are.same({}, entry_names(dir))
    os.remove(big)
  end)

  it("two runners started together on 50 entries: each entry delivered once", function()
    local s = servers.aiosmtpd {}
    local dir = servers.mkdir("q")
    local qq = mailer.queue { dir = dir, server = { host = s.host, port = s.port, security = "none" } }
    for i = 1, 50 do assert(qq:add(message(100 + i))) end
    local go = servers.tmpdir() .. "/go-" .. tostring(now())
    local pids, outs = {}, {}
    for r = 1, 2 do
      outs[r] = servers.tmpdir() .. "/runner-" .. r .. ".out"
      pids[r] = spawn_lua(([[
        local mailer = require "mailer"
        local ok, socket = pcall(require, "socket")
        local q = mailer.queue { dir = %q }
        while not io.open(%q) do if ok then socket.sleep(0.002) end end
        local st = assert(q:run())
        io.write(st.sent, " ", st.busy, " ", st.deferred + st.failed + st.corrupt, "\n")
      ]]):format(dir, go), outs[r])
    end
    sleep(0.3)   -- both loaded and waiting
    writefile(go, "")
    wait_until(function() return not alive(pids[1]) and not alive(pids[2]) end, 30, "the runners")
    local sent = {}
    for r = 1, 2 do
      local out = readfile(outs[r]) or ""
      local n, busy, bad = out:match("^(%d+) (%d+) (%d+)\n$")
      assert.truthy(n, "runner " .. r .. ": " .. out)
      assert.are.equal("0", bad)
      sent[r] = tonumber(n)
    end
    assert.are.equal(50, sent[1] + sent[2])
    local msgs = s:wait_messages(50, 10)
    sleep(0.3)
    msgs = s:messages()
    assert.are.equal(50, #msgs)   -- counted on the server
    local seen = {}
    for _, m in ipairs(msgs) do
      local subject = m.data:match("\nSubject: ([^\r]+)")
      assert.is_nil(seen[subject], subject .. " delivered twice")
      seen[subject] = true
    end
    for i = 1, 50 do assert.is_true(seen["queued " .. (100 + i)]) end
    assert.are.same({}, entry_names(dir))
    io.stderr:write(("\n  two runners: %d + %d of 50\n"):format(sent[1], sent[2]))
    s:stop()
  end)

  it("reports corrupt, truncated and unreadable entries beside good ones, skips them, deletes nothing", function()
    local s = servers.aiosmtpd {}
    local dir = servers.mkdir("q")
    local qq = mailer.queue { dir = dir, server = { host = s.host, port = s.port, security = "none" } }
    local good = {}
    for i = 1, 3 do good[i] = assert(qq:add(message(200 + i))) end
    local src = dir .. "/" .. good[1]
    local meta = readfile(src .. "/meta.json")
    local function entry(name, files)
      local p = dir .. "/" .. name
      assert(core.mkdir(p))
      for f, data in pairs(files) do
        if data == true then assert(core.mkdir(p .. "/" .. f)) else writefile(p .. "/" .. f, data) end
      end
    end
    local eml = readfile(src .. "/message.eml")
    local bad = {
      ["19990101T000000000001Z-truncated"] = { ["meta.json"] = meta:sub(1, 40), ["message.eml"] = eml },
      ["19990101T000000000002Z-garbage"] = { ["meta.json"] = "\0\1garbage", ["message.eml"] = eml },
      ["19990101T000000000003Z-short"] = {
        ["meta.json"] = meta:gsub('"id":"[^"]*"', '"id":"19990101T000000000003Z-short"'),
        ["message.eml"] = eml:sub(1, 50) },
      ["19990101T000000000004Z-dirmeta"] = { ["meta.json"] = true, ["message.eml"] = eml },
      ["19990101T000000000005Z-nometa"] = { ["message.eml"] = eml },
      ["19990101T000000000006Z-schema"] = { ["meta.json"] = '{"version":1}', ["message.eml"] = eml },
    }
    for name, files in pairs(bad) do entry(name, files) end
    writefile(dir .. "/notes.txt", "not an entry\n")
    entry(".tmp-19990101T000000000007Z-inprogress", { ["message.eml"] = eml })   -- an add under way: hidden
    local st = assert(qq:run())
    assert.are.same({ sent = 3, deferred = 0, failed = 0, busy = 0, corrupt = 7 }, st)
    local list = qq:list()
    assert.are.equal(7, #list)
    local fields = {}
    for _, e in ipairs(list) do
      assert.is_true(e.corrupt, e.id)
      assert.are.equal("failed", e.state)
      assert.are.equal("input", e.last_error.kind)
      fields[e.id] = e.last_error.field
    end
    assert.are.same({
      ["19990101T000000000001Z-truncated"] = "meta.json", ["19990101T000000000002Z-garbage"] = "meta.json",
      ["19990101T000000000003Z-short"] = "message.eml", ["19990101T000000000004Z-dirmeta"] = "meta.json",
      ["19990101T000000000005Z-nometa"] = "meta.json", ["19990101T000000000006Z-schema"] = "meta.json",
      ["notes.txt"] = "notes.txt" }, fields)
    assert.are.equal(3, #s:wait_messages(3, 5))
    -- nothing was deleted; a second run skips them again
    assert.are.equal(7, #entry_names(dir))
    assert.truthy(readfile(dir .. "/.tmp-19990101T000000000007Z-inprogress/message.eml"))
    assert.are.same({ sent = 0, deferred = 0, failed = 0, busy = 0, corrupt = 7 }, qq:run())
    -- remove takes them away on request
    for name in pairs(bad) do assert.is_true(qq:remove(name)) end
    assert.is_true(qq:remove("notes.txt"))
    assert.are.same({}, qq:list())
    s:stop()
  end)

  it("fails add with kind input when the directory cannot be written, and lists unreadable entries", function()
    local file = servers.tmpdir() .. "/plain-file"
    writefile(file, "x")
    local id, err = mailer.queue { dir = file .. "/spool" }:add(message(12))
    assert.is_nil(id)
    assert.are.same({ "input", "dir" }, { err.kind, err.field })
    -- permissions: as an unprivileged user (root can write anywhere)
    local idp = io.popen("id -u")
    local uid = idp:read("*l")
    idp:close()
    if not sh("command -v setpriv >/dev/null 2>&1") or uid ~= "0" then
      pending("needs root and setpriv to act as another user")
      return
    end
    local dir = servers.mkdir("q")
    local qq = mailer.queue { dir = dir }
    local open = assert(qq:add(message(13)))
    local closed = assert(qq:add(message(14)))
    assert(sh("chmod 755 " .. q(dir .. "/" .. open) .. " && chmod 644 " .. q(dir .. "/" .. open) .. "/*"))
    assert(sh("chmod 700 " .. q(dir .. "/" .. closed)))
    local out = servers.mkdir("out")
    assert(sh("chmod 777 " .. q(out)))
    local code = ([[
      local q = require("mailer").queue { dir = %q }
      local id, err = q:add { from = "a@example.com", to = "b@example.com", text = "x" }
      local f = io.open(%q, "w")
      f:write(tostring(id), "|", tostring(err and err.kind), "|", tostring(err and err.field), "\n")
      for _, e in ipairs(assert(q:list())) do
        f:write(e.id, "|", e.state, "|", tostring(e.corrupt), "|", tostring(e.last_error and e.last_error.message), "\n")
      end
      f:close()
    ]]):format(dir, out .. "/result")
    assert(sh(("setpriv --reuid=65534 --regid=65534 --clear-groups env LUA_PATH=%s LUA_CPATH=%s %s -e %s")
      :format(q(package.path), q(package.cpath), compat.lua, q(code))))
    local lines = {}
    for l in assert(readfile(out .. "/result")):gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal("nil|input|dir", lines[1])
    assert.are.equal(open .. "|queued|nil|nil", lines[2])
    assert.are.equal(closed .. "|failed|true|", lines[3]:sub(1, #closed + 13))
    assert.matches("[Pp]ermission denied", lines[3])
  end)
end)

describe("queue from the command line", function()
  local ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS LUA_PATH='lua/?.lua;;' LUA_CPATH='" .. compat.build_cpath .. "' "
  local function run(args, extra_env)
    local out, err = os.tmpname(), os.tmpname()
    local cmd = ENV .. (extra_env or "") .. " " .. compat.lua .. " bin/mailer"
    for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
    local _, how, code = compat.execute(cmd .. " >" .. out .. " 2>" .. err)
    local o, e = readfile(out), readfile(err)
    os.remove(out)
    os.remove(err)
    return how == "exit" and code or 128 + code, o, e
  end
  teardown(function() servers.stop_all() end)

  it("send --queue, queue list, run, retry and remove", function()
    local s = servers.aiosmtpd { extensions = { "PIPELINING", "ENHANCEDSTATUSCODES" },
      reject_rcpt = { ["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: no such user" } }
    local dir = servers.mkdir("q")
    local url = "smtp://127.0.0.1:" .. s.port
    local code, out, err = run({ "send", "--from", "ann@example.com", "--to", "bob@example.com",
      "--subject", "via the queue", "--text", "hello", "--queue", dir, "--server", url, "--security", "none",
      "--user", "ann" }, "MAILER_PASSWORD=s3cret-pw")
    assert.are.equal(0, code, err)
    local id = out:match("^(%S+)\n$")
    assert.truthy(id)
    assert.is_nil(readfile(dir .. "/" .. id .. "/meta.json"):find("s3cret", 1, true))
    code, out = run { "queue", "add", "--dir", dir, "--from", "ann@example.com", "--to", "nobody@example.com",
      "--text", "x", "--server", url, "--security", "none" }
    assert.are.equal(0, code)
    local id2 = out:match("^(%S+)\n$")
    code, out = run { "queue", "list", "--dir", dir }
    assert.are.equal(0, code)
    assert.matches(id .. "  queued  attempts 0", out, 1, true)
    assert.matches("from ann@example.com to bob@example.com via 127.0.0.1:" .. s.port, out, 1, true)
    code, out, err = run { "queue", "run", "--dir", dir }
    assert.are.equal(69, code, err)   -- one entry failed for good
    assert.are.equal("sent 1, deferred 0, failed 1\n", out)
    assert.are.equal(1, #s:wait_messages(1, 5))
    code, out = run { "queue", "list", "--dir", dir, "--json" }
    assert.are.equal(0, code)
    local list = assert(dkjson.decode(out))
    assert.are.equal(1, #list)
    assert.are.same({ id2, "failed", 550, "5.1.1" },
                    { list[1].id, list[1].state, list[1].refused[1].code, list[1].refused[1].enhanced })
    code, out = run { "queue", "list", "--dir", dir }
    assert.matches("refused nobody@example.com: smtp 550 5.1.1:", out, 1, true)
    assert.are.equal(0, (run { "queue", "retry", "--dir", dir, id2 }))
    assert.matches("queued", select(2, run { "queue", "list", "--dir", dir }))
    assert.are.equal(0, (run { "queue", "remove", "--dir", dir, id2 }))
    code, _, err = run { "queue", "remove", "--dir", dir, id2 }
    assert.are.equal(65, code)
    assert.matches("no entry", err)
    assert.are.equal("", select(2, run { "queue", "list", "--dir", dir }))
    assert.are.equal(64, (run { "queue", "list" }))
    assert.are.equal(64, (run { "queue", "frob", "--dir", dir }))
    assert.are.equal(64, (run { "queue", "retry", "--dir", dir }))
    s:stop()
  end)
end)
