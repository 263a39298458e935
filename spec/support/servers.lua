-- Test peers for the specs: a throwaway CA, a recording aiosmtpd server,
-- a scripted hostile server, a private Postfix, Postfix's smtp-sink and a
-- private Dovecot submission service.
-- Each server runs as its own process group on 127.0.0.1 and is stopped by
-- :stop(), servers.stop_all(), when the Lua state closes, or (watchdog in
-- the peer) when this process is gone. Plain Lua 5.1-5.4/LuaJIT; uses
-- LuaSocket (sleep, clock, free ports) and dkjson (the peers' records).
-- The peers are Python scripts beside this file, run by Debian's
-- /usr/bin/python3 without the sanitizer runtime (LD_PRELOAD is dropped).
--
--   local servers = require "support.servers"
--   servers.ca()            -> { dir=, cafile=, certs = { good=, ["wrong-host"]=, expired=,
--                                future=, ["self-signed"]=, untrusted=, wildcard=,
--                                ["partial-wildcard"]=, client= } }
--                              each { cert=, key= }; created once per run
--   servers.aiosmtpd{...}   -> s: s.host, s.port, s.cafile, s:messages(),
--                              s:wait_messages(n, timeout), s:connections(), s:stop()
--   servers.hostile{ step, ..., connections=, scripts=, timeout=, linger= }
--                           -> h: h.host, h.port, h.cafile, h:received([i]), h:wait(timeout),
--                              h:status(), h:events(), h:stop()
--   servers.postfix{...}    -> p: p.host, p.port, p.domain, p.maildir, p:messages([{crlf=true}]),
--                              p:wait_messages(n, timeout[, opts]), p:deliveries(), p:maillog(),
--                              p:stop();  servers.have_postfix() -> true | false, why
--   servers.smtp_sink{...}  -> k: k.host, k.port, k:stop()
--   servers.dovecot{...}    -> d: d.host, d.port, d.cafile, d:log(), d:stop();
--                              servers.have_dovecot() -> true | false, why
--   servers.stop_all(), servers.free_port(), servers.tmpdir(), servers.mkdir(name)
-- Every server also has :alive() and :stderr(); a server that fails to
-- start raises an error that quotes its stderr.

local M = {}

M.host = "127.0.0.1"
-- Debian's interpreter: it has python3-aiosmtpd and python3-cryptography.
M.python = os.getenv("MAILER_TEST_PYTHON") or "/usr/bin/python3"

local has_socket, socket = pcall(require, "socket")
if not has_socket then socket = nil end

-- Process-wide state lives in the registry: busted re-requires this module
-- for every spec file (file insulation), but the CA, the temp directory and
-- the list of running servers must be shared by the whole run.
local REGKEY = "mailer.spec.support.servers"
local registry = debug.getregistry()
local S = registry[REGKEY]
if not S then
  S = { live = {}, seq = 0 }
  registry[REGKEY] = S
end

---------------------------------------------------------------------------
-- small utilities
---------------------------------------------------------------------------

local function shquote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Children must not inherit the AddressSanitizer runtime that the ASan run
-- preloads into lua5.4: the outer shell execs env at once (an exec runs no
-- leak check), and env starts the real command without it.
local function wrap(cmd)
  return "exec env -u LD_PRELOAD -u ASAN_OPTIONS /bin/sh -c " .. shquote(cmd)
end

-- run a shell command; true when it exited 0
local function sh(cmd)
  local a, _, c = os.execute(wrap(cmd))
  if type(a) == "number" then return a == 0 end   -- Lua 5.1
  return a == true and (c == nil or c == 0)
end

-- run a shell command and return its standard output
local function sh_read(cmd)
  local f = assert(io.popen(wrap(cmd), "r"))
  local out = f:read("*a")
  f:close()
  return out
end

local function readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function writefile(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function now()
  if socket then return socket.gettime() end
  return os.time()
end

local function sleep(seconds)
  if socket then socket.sleep(seconds) else sh("sleep " .. seconds) end
end

local function tail(text, n)
  if not text or text == "" then return "(empty)" end
  n = n or 2000
  if #text > n then return "..." .. text:sub(-n) end
  return text
end

-- Absolute directory of this file, so the Python peers are found whatever
-- the current directory is.
local function support_dir()
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or "spec/support/servers.lua"
  local dir = path:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    S.cwd = S.cwd or sh_read("pwd"):gsub("%s+$", "")
    dir = S.cwd .. "/" .. dir
  end
  return dir
end
local SUPPORT = support_dir()

-- pid of this Lua process (the peers' watchdogs follow it)
local function lua_pid()
  if not S.pid then
    S.pid = tonumber((sh_read("echo $PPID"):match("%d+")))
  end
  return S.pid
end

-- is the process alive (a zombie counts as dead)?
local function alive(pid)
  local stat = readfile("/proc/" .. pid .. "/stat")
  if stat then
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= "Z" and state ~= "X"
  end
  if exists("/proc/self/stat") then return false end
  return sh("kill -0 " .. pid .. " 2>/dev/null")
end

---------------------------------------------------------------------------
-- JSON: our own encoder for configs (Lua strings are bytes: bytes outside
-- printable ASCII go out as \u00XX, and the peers read them back as
-- Latin-1 to get the exact bytes); dkjson to read the peers' records.
---------------------------------------------------------------------------

local function is_array(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" then return false end
    n = n + 1
  end
  for i = 1, n do if t[i] == nil then return false end end
  return true
end

local function encode(v)
  local tv = type(v)
  if tv == "string" then
    return '"' .. v:gsub('[%c"\\\128-\255]', function(c)
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("cannot encode " .. tostring(v)) end
    if v == math.floor(v) and math.abs(v) < 2^53 then return string.format("%d", v) end
    return string.format("%.17g", v)
  elseif tv == "boolean" then
    return tostring(v)
  elseif tv == "nil" then
    return "null"
  elseif tv == "table" then
    local out = {}
    if is_array(v) then
      for i = 1, #v do out[i] = encode(v[i]) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local val = v[k]
      if val == nil then val = v[tonumber(k)] end
      out[#out + 1] = encode(k) .. ":" .. encode(val)
    end
    return "{" .. table.concat(out, ",") .. "}"
  end
  error("cannot encode a " .. tv)
end
M.json_encode = encode

local json
local function decode(text)
  if not json then
    local ok, mod = pcall(require, "dkjson")
    if not ok then error("support.servers needs dkjson (Debian: lua-dkjson)", 2) end
    json = mod
  end
  local value, _, err = json.decode(text)
  if err then error("bad JSON from a test peer: " .. err .. ": " .. tail(text, 200)) end
  return value
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64INV = {}
for i = 1, 64 do B64INV[B64:byte(i)] = i - 1 end

-- base64 decode without bit operations (works on every Lua)
local function b64decode(s)
  local out, n = {}, 0
  local acc, bits = 0, 0
  for i = 1, #s do
    local v = B64INV[s:byte(i)]
    if v then
      acc = acc * 64 + v
      bits = bits + 6
      if bits >= 8 then
        bits = bits - 8
        local p = 2 ^ bits
        local byte = math.floor(acc / p)
        acc = acc - byte * p
        n = n + 1
        out[n] = string.char(byte)
      end
    end
  end
  return table.concat(out)
end
M.b64decode = b64decode

---------------------------------------------------------------------------
-- temp directory, free ports
---------------------------------------------------------------------------

-- The per-run temp directory (created once per process, removed at exit
-- unless MAILER_KEEP_TMP is set).
function M.tmpdir()
  if not S.root then
    local base = os.getenv("TMPDIR") or "/tmp"
    local dir = sh_read("mktemp -d " .. shquote(base .. "/mailer-spec.XXXXXX")):gsub("%s+$", "")
    assert(dir ~= "", "mktemp -d failed")
    -- Postfix's unprivileged daemons must be able to reach their directories.
    sh("chmod 755 " .. shquote(dir))
    S.root = dir
  end
  return S.root
end

-- A new empty directory under the per-run temp directory.
function M.mkdir(name)
  S.seq = S.seq + 1
  local dir = M.tmpdir() .. "/" .. (name or "dir") .. "-" .. S.seq
  assert(sh("mkdir -p " .. shquote(dir)), "cannot create " .. dir)
  return dir
end

-- A TCP port on 127.0.0.1 that was free a moment ago.
function M.free_port()
  if socket then
    local srv = assert(socket.bind(M.host, 0))
    local _, port = srv:getsockname()
    srv:close()
    return tonumber(port)
  end
  return tonumber(sh_read(M.python .. [[ -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]))
end

---------------------------------------------------------------------------
-- the CA
---------------------------------------------------------------------------

-- The throwaway PKI, created once per run:
-- { dir=, cafile=, certs = { [name] = { cert=, key= } } } with names good,
-- wrong-host, expired, future, self-signed, untrusted, wildcard,
-- partial-wildcard, client.
function M.ca()
  if S.ca then return S.ca end
  local dir = M.tmpdir() .. "/ca"
  local out = sh_read(string.format("%s %s %s 2>&1", M.python, shquote(SUPPORT .. "/ca.py"), shquote(dir)))
  if not exists(dir .. "/done") then
    error("creating the test CA failed: " .. tail(out), 2)
  end
  local certs = {}
  for _, name in ipairs { "good", "wrong-host", "expired", "future", "self-signed",
                          "untrusted", "wildcard", "partial-wildcard", "client" } do
    certs[name] = { cert = dir .. "/" .. name .. ".pem", key = dir .. "/" .. name .. ".key" }
  end
  S.ca = { dir = dir, cafile = dir .. "/ca.pem", certs = certs,
           untrusted_cafile = dir .. "/untrusted-ca.pem" }
  return S.ca
end

---------------------------------------------------------------------------
-- starting and stopping peers
---------------------------------------------------------------------------

local Server = {}
Server.__index = Server

local function kill_group(pid, sig)
  sh(string.format("kill -%s -- -%d 2>/dev/null; kill -%s %d 2>/dev/null; true", sig, pid, sig, pid))
end

-- Is anything left of the process group led by pid (the leader or the
-- daemons it started, e.g. Postfix's master)? Zombies do not count.
local function group_alive(pid)
  if alive(pid) then return true end
  for member in sh_read("pgrep -g " .. pid .. " 2>/dev/null"):gmatch("%d+") do
    if alive(member) then return true end
  end
  return false
end

-- Stop the given servers: TERM to every group at once, wait until the
-- groups are gone (so their ports are closed), KILL what is left.
local function stop_servers(list)
  local pending = {}
  for _, s in ipairs(list) do
    if not s.stopped then
      s.stopped = true
      S.live[s] = nil
      kill_group(s.pid, "TERM")
      pending[#pending + 1] = s
    end
  end
  local function wait(seconds)
    local deadline = now() + seconds
    while #pending > 0 do
      local still = {}
      for _, s in ipairs(pending) do
        if group_alive(s.pid) then still[#still + 1] = s end
      end
      pending = still
      if #pending == 0 or now() > deadline then return end
      sleep(0.02)
    end
  end
  wait(5)
  for _, s in ipairs(pending) do kill_group(s.pid, "KILL") end
  wait(2)
end

-- Stop this server (and everything it started). Idempotent.
function Server:stop()
  stop_servers { self }
end

function Server:alive()
  return not self.stopped and alive(self.pid)
end

-- What the peer wrote to stderr (for error messages).
function Server:stderr()
  return readfile(self.dir .. "/stderr") or ""
end

-- Start a Python peer with a JSON config and wait for "READY <port>".
local function spawn(kind, script, config, opts)
  local dir = M.mkdir(kind)
  config.parent_pid = lua_pid()
  config.dir = config.dir or dir
  writefile(dir .. "/config.json", encode(config))
  -- a plain command in the background, so that $! is the peer itself
  local cmd = string.format("%s %s --config %s >%s 2>%s </dev/null & echo $!",
                            M.python, shquote(SUPPORT .. "/" .. script), shquote(dir .. "/config.json"),
                            shquote(dir .. "/stdout"), shquote(dir .. "/stderr"))
  local pid = tonumber((sh_read(cmd):match("%d+")))
  assert(pid, "could not start " .. script)
  local self = setmetatable({ kind = kind, dir = dir, pid = pid, host = M.host }, Server)
  S.live[self] = true
  local deadline = now() + ((opts and opts.start_timeout) or 20)
  while true do
    local out = readfile(dir .. "/stdout") or ""
    local port = out:match("READY (%d+)")
    if port then
      self.port = tonumber(port)
      return self
    end
    if not alive(pid) then
      S.live[self] = nil
      self.stopped = true
      error(string.format("%s (%s) exited before it was ready:\n%s", kind, script,
                          tail(readfile(dir .. "/stderr"))), 3)
    end
    if now() > deadline then
      self:stop()
      error(string.format("%s (%s) not ready after %ss:\n%s", kind, script,
                          (opts and opts.start_timeout) or 20,
                          tail(readfile(dir .. "/stderr"))), 3)
    end
    sleep(0.01)
  end
end

-- For other helpers (support.nginx): a process group led by s.pid that
-- stop_all() stops with the peers, and a way to stop it alone.
function M._register(s)
  S.live[s] = true
end

function M._stop(s)
  stop_servers { s }
end

-- Stop everything started so far (call from a busted teardown/finally).
function M.stop_all()
  local list = {}
  for s in pairs(S.live) do list[#list + 1] = s end
  stop_servers(list)
end

-- At exit (lua_close runs finalizers) stop whatever is left and remove the
-- temp directory. The sentinel lives in the registry state, so it survives
-- busted's per-file reloading of this module.
if not S.sentinel then
  local function at_exit()
    pcall(M.stop_all)
    if S.root and not os.getenv("MAILER_KEEP_TMP") then
      pcall(sh, "rm -rf " .. shquote(S.root))
    end
  end
  if _VERSION == "Lua 5.1" and newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = at_exit
    S.sentinel = p
  else
    S.sentinel = setmetatable({}, { __gc = at_exit })
  end
end

---------------------------------------------------------------------------
-- aiosmtpd
---------------------------------------------------------------------------

local Smtpd = setmetatable({}, { __index = Server })
Smtpd.__index = Smtpd

-- servers.aiosmtpd{ tls = nil|"none"|"starttls"|"implicit", require_starttls = false,
--   cert = "good", client_cert = nil|"optional"|"require",
--   auth = { user =, password =, mechanisms = {...} } | nil, auth_require_tls = true,
--   auth_required = false, smtputf8 = true, size = nil|N|0,
--   extensions = { "PIPELINING" }, reject_rcpt = { addr | [addr] = reply },
--   data_reply = nil, hostname = nil, start_timeout = 20,
--   scram_fault = nil|"wrong_signature"|"no_signature",
--   greeting_delay = nil|seconds (each connection waits that long for its 220),
--   port = nil|N (listen there, e.g. where a client already failed to connect) }
--   reply_delay = nil|seconds (before every reply), read_rate = nil|bytes a second,
--   idle_timeout = nil|seconds, idle_reply = nil|"421 ..." (sent when it closes an idle session) }
function M.aiosmtpd(opts)
  opts = opts or {}
  local ca = M.ca()
  local auth = opts.auth
  local reject = opts.reject_rcpt
  if reject and is_array(reject) then
    local map = {}
    for _, a in ipairs(reject) do map[a] = false end
    reject = map
  end
  if reject then
    local map = {}
    for k, v in pairs(reject) do map[k] = v or "" end
    reject = map
  end
  local cfg = {
    tls = opts.tls or "none",
    require_starttls = opts.require_starttls and true or false,
    cert = opts.cert or "good",
    client_cert = opts.client_cert,
    certdir = ca.dir,
    auth_user = auth and auth.user,
    auth_password = auth and auth.password,
    auth_mechanisms = auth and auth.mechanisms,
    auth_require_tls = opts.auth_require_tls ~= false,
    auth_required = opts.auth_required and true or false,
    smtputf8 = opts.smtputf8 ~= false,
    size = opts.size,
    extensions = opts.extensions or { "PIPELINING" },
    reject_rcpt = reject,
    data_reply = opts.data_reply,
    scram_fault = opts.scram_fault,
    hostname = opts.hostname,
    idle_timeout = opts.idle_timeout,
    greeting_delay = opts.greeting_delay,
    port = opts.port,
    reply_delay = opts.reply_delay,
    read_rate = opts.read_rate,
    idle_reply = opts.idle_reply,
  }
  local self = spawn("aiosmtpd", "smtpd.py", cfg, opts)
  self.cafile = ca.cafile
  self.record = self.dir .. "/messages.jsonl"
  self._parsed, self._offset = {}, 0
  return setmetatable(self, Smtpd)
end

-- All messages recorded so far:
-- { mail_from=, rcpt_tos={}, mail_options={}, rcpt_options={}, rcpts={{address=,options=}},
--   data=<exact bytes>, size=, auth=<identity>|nil, auth_mechanism=, tls=bool,
--   tls_version=, client_cert=<CN>|nil, helo=, smtputf8=bool, connection=n, n=n,
--   time=<Unix seconds when the final dot arrived> }
function Smtpd:messages()
  local f = io.open(self.record, "rb")
  if not f then return self._parsed end
  f:seek("set", self._offset)
  local chunk = f:read("*a") or ""
  f:close()
  local consumed = 0
  for line in chunk:gmatch("([^\n]*)\n") do
    consumed = consumed + #line + 1
    local rec = decode(line)
    rec.data = b64decode(rec.data_b64 or "")
    rec.data_b64 = nil
    self._parsed[#self._parsed + 1] = rec
  end
  self._offset = self._offset + consumed
  local copy = {}
  for i, m in ipairs(self._parsed) do copy[i] = m end
  return copy
end

-- Wait until at least n messages are recorded; returns the list (and an
-- error string as second value when the timeout (default 10 s) passed first).
function Smtpd:wait_messages(n, timeout)
  local deadline = now() + (timeout or 10)
  while true do
    local msgs = self:messages()
    if #msgs >= n then return msgs end
    if now() > deadline or not self:alive() then
      return msgs, string.format("%d of %d messages recorded%s", #msgs, n,
                                 self:alive() and "" or "; server died: " .. tail(self:stderr()))
    end
    sleep(0.02)
  end
end

-- Number of TCP connections accepted so far (STARTTLS does not count again).
function Smtpd:connections()
  local data = readfile(self.dir .. "/connections") or ""
  local n = 0
  for _ in data:gmatch("\n") do n = n + 1 end
  return n
end

---------------------------------------------------------------------------
-- hostile
---------------------------------------------------------------------------

local Hostile = setmetatable({}, { __index = Server })
Hostile.__index = Hostile

-- servers.hostile{ step, step, ..., connections = 1, scripts = { {steps}, ... },
--   timeout = 10, accept_timeout = 30, linger = 2 }
-- Steps: {send=}, {expect=}, {expect_data=true}, {tls="good"}, {sleep=s},
-- {trickle=, interval=}, {flood=, bytes=}, {read_all=true}, {close=true|"reset"|"now"}.
function M.hostile(spec)
  spec = spec or {}
  local steps = {}
  for i = 1, #spec do steps[i] = spec[i] end
  local cfg = {
    steps = steps,
    scripts = spec.scripts,
    connections = spec.connections,
    timeout = spec.timeout,
    accept_timeout = spec.accept_timeout,
    linger = spec.linger,
  }
  local ca = M.ca()
  cfg.certdir = ca.dir
  local self = spawn("hostile", "hostile.py", cfg, spec)
  self.cafile = ca.cafile
  return setmetatable(self, Hostile)
end

-- Exact bytes the client sent (decrypted after a tls step): all connections
-- in order, or only connection i.
function Hostile:received(i)
  if i then return readfile(self.dir .. "/recv-" .. i .. ".bin") or "" end
  local out, k = {}, 1
  while true do
    local data = readfile(self.dir .. "/recv-" .. k .. ".bin")
    if not data then break end
    out[k] = data
    k = k + 1
  end
  return table.concat(out)
end

-- The final status { ok=, error=, connections=, notes={} }, or nil while running.
function Hostile:status()
  local text = readfile(self.dir .. "/status.json")
  return text and decode(text) or nil
end

-- Timestamped log of what the script did (for failure messages).
function Hostile:events()
  return readfile(self.dir .. "/events.log") or ""
end

-- Wait until the script finished. Returns true when every step ran;
-- false, reason when a step failed (e.g. the client closed the connection
-- or aborted the TLS handshake); nil, "timeout" if still running.
function Hostile:wait(timeout)
  local deadline = now() + (timeout or 10)
  while true do
    local st = self:status()
    if st then
      if st.ok then return true end
      return false, st.error
    end
    if not alive(self.pid) then
      return false, "hostile.py died: " .. tail(self:stderr())
    end
    if now() > deadline then return nil, "timeout" end
    sleep(0.02)
  end
end

---------------------------------------------------------------------------
-- Postfix
---------------------------------------------------------------------------

local Postfix = setmetatable({}, { __index = Server })
Postfix.__index = Postfix

-- Can a private Postfix run here? true, or false and the reason.
function M.have_postfix()
  if not exists("/usr/sbin/postfix") then return false, "postfix is not installed" end
  local uid = tonumber((sh_read("id -u"):match("%d+")))
  if uid ~= 0 then return false, "a private Postfix needs root" end
  return true
end

-- servers.postfix{ domains = {"test.example"}, size = nil, tls = false, main = {param=value} }
-- Accepts any <x>@test.example into the Maildir p.maildir (local-parts starting with
-- "unknown" get 550); other domains get 554 relay denied.
function M.postfix(opts)
  opts = opts or {}
  local ok, why = M.have_postfix()
  if not ok then error("servers.postfix: " .. why, 2) end
  local cfg = { domains = opts.domains, size = opts.size, tls = opts.tls, main = opts.main }
  if opts.tls then cfg.certdir = M.ca().dir end
  local self = spawn("postfix", "postfix.py", cfg, opts)
  self.maildir = self.dir .. "/mail"
  self.domain = (opts.domains and opts.domains[1]) or "test.example"
  if opts.tls then self.cafile = M.ca().cafile end
  return setmetatable(self, Postfix)
end

-- Delivered files in delivery order: { {recipient=<Delivered-To>, file=, data=} }
function Postfix:deliveries()
  local listing = sh_read("find " .. shquote(self.maildir) .. " -type f -path '*/new/*' 2>/dev/null")
  local files = {}
  for path in listing:gmatch("[^\n]+") do
    local base = path:match("([^/]+)$")
    local secs, usec = base:match("^(%d+)%..-M(%d+)")
    files[#files + 1] = { path = path, key = (tonumber(secs) or 0) * 1e6 + (tonumber(usec) or 0) }
  end
  table.sort(files, function(a, b)
    if a.key ~= b.key then return a.key < b.key end
    return a.path < b.path
  end)
  local out = {}
  for i, f in ipairs(files) do
    local data = readfile(f.path) or ""
    out[i] = { recipient = data:match("^.-\nDelivered%-To: ([^\n]*)\n") or
                           data:match("^Delivered%-To: ([^\n]*)\n"),
               file = f.path, data = data }
  end
  return out
end

-- Raw bytes of each delivered Maildir file, in delivery order. Postfix
-- stores LF line ends (Maildir convention) and prepends Return-Path,
-- X-Original-To, Delivered-To and Received; with opts.crlf every LF is
-- turned back into CRLF, as the message was on the wire.
function Postfix:messages(opts)
  local out = {}
  for i, d in ipairs(self:deliveries()) do
    out[i] = (opts and opts.crlf) and d.data:gsub("\r?\n", "\r\n") or d.data
  end
  return out
end

-- Wait until at least n messages are delivered (opts as for messages());
-- returns the list, plus an error string when the timeout passed first.
function Postfix:wait_messages(n, timeout, opts)
  local deadline = now() + (timeout or 10)
  while true do
    local msgs = self:messages(opts)
    if #msgs >= n then return msgs end
    if now() > deadline or not self:alive() then
      return msgs, string.format("%d of %d messages delivered; maillog:\n%s", #msgs, n,
                                 tail(self:maillog()))
    end
    sleep(0.05)
  end
end

function Postfix:maillog()
  return readfile(self.dir .. "/maillog") or ""
end

---------------------------------------------------------------------------
-- Dovecot
---------------------------------------------------------------------------

-- Can a private Dovecot run here? true, or false and the reason.
function M.have_dovecot()
  if not exists("/usr/sbin/dovecot") then return false, "dovecot is not installed (Debian: dovecot-core)" end
  if not exists("/usr/lib/dovecot/submission") then
    return false, "Dovecot's submission service is not installed (Debian: dovecot-submissiond)"
  end
  local uid = tonumber((sh_read("id -u"):match("%d+")))
  if uid ~= 0 then return false, "a private Dovecot needs root" end
  return true
end

-- servers.dovecot{ users = { name = password }, mechanisms = { "plain", "login", "scram-sha-256" },
--                  relay_port = N }
-- Dovecot's submission service on d.host:d.port: STARTTLS with the "good"
-- certificate (d.cafile), AUTH only after it, accepted messages relayed to
-- 127.0.0.1:relay_port (an aiosmtpd, say). d:log() is dovecot.log.
function M.dovecot(opts)
  opts = opts or {}
  local ok, why = M.have_dovecot()
  if not ok then error("servers.dovecot: " .. why, 2) end
  local ca = M.ca()
  local cfg = { users = opts.users, mechanisms = opts.mechanisms, relay_port = opts.relay_port,
                certdir = ca.dir }
  local self = spawn("dovecot", "dovecot.py", cfg, opts)
  self.cafile = ca.cafile
  self.log = function(s) return readfile(s.dir .. "/dovecot.log") or "" end
  return self
end

---------------------------------------------------------------------------
-- smtp-sink
---------------------------------------------------------------------------

-- servers.smtp_sink{ args = { smtp-sink options }, cpu = "0" (taskset), backlog = 256 }
function M.smtp_sink(opts)
  opts = opts or {}
  local cfg = { args = opts.args, cpu = opts.cpu, backlog = opts.backlog }
  return spawn("smtp-sink", "sink.py", cfg, opts)
end

-- small file helpers shared with the other spec helpers
M.readfile, M.writefile = readfile, writefile

return M
