-- mailer.queue: store and forward (API.md "Queue (store and forward)").
--
-- A queue is a directory; each entry is a subdirectory named by its id:
--
--   <id>/message.eml    the message as rendered when it was added, sent as
--                       is (mailer.raw_message)
--   <id>/meta.json      envelope, server (never credentials), state,
--                       attempts, next attempt, last error, history
--   .tmp-<id>/          an add in progress
--   .trash-<id>-<rnd>/  an entry being deleted
--
-- Durability: add writes and fsyncs both files inside .tmp-<id>, fsyncs
-- that directory, renames it to <id> and fsyncs the queue directory, so an
-- entry appears whole or not at all. meta.json is replaced the same way
-- (write a temporary file, fsync, rename, fsync the entry directory).
--
-- Claiming: a runner takes an exclusive, non-blocking flock on the entry's
-- directory, reads meta.json again under it, sends, then renames the entry
-- away (done) or replaces meta.json, and only then lets go. The kernel drops
-- the lock of a runner that dies (even by SIGKILL), and the entry, which
-- is only ever changed by atomic renames, is sent again by the next run:
-- at least once, and never by two runners at the same time.
local core = require "mailer.core"
local json = require "mailer.json"

local type, pairs, ipairs, tostring, tonumber, setmetatable, pcall, error =
  type, pairs, ipairs, tostring, tonumber, setmetatable, pcall, error
local floor, min = math.floor, math.min
local sort = table.sort

local M = {}

M.DEFAULT_DELAYS = { 60, 300, 900, 1800, 3600 }   -- then hourly: the last one repeats
M.DEFAULT_MAX_AGE = 5 * 86400
local HISTORY = 20             -- attempts kept in meta.json (the most recent)
local STALE_TMP = 3600         -- an unlocked .tmp-* older than this is an add cut short
local ID_PATTERN = "^[%w][%w%.%-_]*$"

local Queue = {}
Queue.__index = Queue

local function input_error(field, message)
  return nil, core.error { kind = "input", field = field, message = field .. ": " .. message }
end

local function mailer() return require "mailer" end

---------------------------------------------------------------------------
-- files
---------------------------------------------------------------------------

-- The whole content of a file, or nil, message.
local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data, rerr = f:read("*a")
  f:close()
  if not data then return nil, path .. ": " .. tostring(rerr) end
  return data
end

-- The size of a file, or nil, message.
local function file_size(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local size, serr = f:seek("end")
  f:close()
  if not size then return nil, path .. ": " .. tostring(serr) end
  return size
end

-- Write data to a new file and fsync it: true | nil, message.
local function write_new(path, data)
  local f, err = core.q_file(path)
  if not f then return nil, err end
  local ok, werr = f:write(data)
  if not ok then
    f:close()
    os.remove(path)
    return nil, werr
  end
  ok, werr = f:sync()
  if not ok then
    os.remove(path)
    return nil, werr
  end
  return true
end

-- Replace path with data durably: a temporary file beside it, fsync,
-- rename over path, fsync the directory. true | nil, message.
local function replace_file(dir, name, data)
  local tmp = dir .. "/." .. name .. "." .. core.random_hex(6) .. ".tmp"
  local ok, err = write_new(tmp, data)
  if not ok then return nil, err end
  ok, err = os.rename(tmp, dir .. "/" .. name)
  if not ok then
    os.remove(tmp)
    return nil, err
  end
  return core.q_fsync_dir(dir)
end

-- Remove a directory and everything in it (symbolic links are removed,
-- never followed). Best effort: what cannot be removed stays.
local function remove_tree(path)
  local list = core.q_scan(path)
  for _, e in ipairs(list or {}) do
    local p = path .. "/" .. e.name
    if e.dir then remove_tree(p) else os.remove(p) end
  end
  os.remove(path)
end

---------------------------------------------------------------------------
-- metadata
---------------------------------------------------------------------------

local STATES = { queued = true, deferred = true, failed = true }

-- The fields of a server table that are stored with an entry, and their
-- types (never username, password or token; auth is a mechanism name).
local STORED = { host = "string", port = "number", security = "string", helo = "string",
                 timeout = "number", allow_plaintext_auth = "boolean", chunking = "boolean",
                 auth = "string" }
local TLS_STORED = { verify = "boolean", cafile = "string", capath = "string",
                     servername = "string", certfile = "string", keyfile = "string" }

-- Is s a stored server table (as storable_server makes them)?
local function valid_server(s)
  if type(s) ~= "table" or type(s.host) ~= "string" then return false end
  for k, v in pairs(s) do
    if k == "tls" then
      if type(v) ~= "table" then return false end
      for tk, tv in pairs(v) do
        if TLS_STORED[tk] ~= type(tv) then return false end
      end
    elseif STORED[k] ~= type(v) then
      return false
    end
  end
  return true
end

local function is_string_list(t)
  if type(t) ~= "table" then return false end
  for i = 1, #t do
    if type(t[i]) ~= "string" then return false end
  end
  for k in pairs(t) do
    if type(k) ~= "number" then return false end
  end
  return true
end

local function is_count(v)
  return type(v) == "number" and v >= 0 and v == floor(v)
end

-- Check a decoded meta.json against the schema: true | nil, what is wrong.
local function check_meta(m, id)
  if type(m) ~= "table" then return nil, "not a JSON object" end
  if m.version ~= 1 then return nil, "unknown version " .. tostring(m.version) end
  if m.id ~= id then return nil, "id " .. tostring(m.id) .. " does not match the directory" end
  if type(m.from) ~= "string" then return nil, "from: not a string" end
  if not is_string_list(m.to) then return nil, "to: not a list of addresses" end
  if m.delivered ~= nil and not is_string_list(m.delivered) then return nil, "delivered: not a list" end
  if m.refused ~= nil and type(m.refused) ~= "table" then return nil, "refused: not a list" end
  for _, r in ipairs(m.refused or {}) do
    if type(r) ~= "table" or type(r.address) ~= "string" then return nil, "refused: bad entry" end
  end
  if not STATES[m.state] then return nil, "state: " .. tostring(m.state) end
  if not is_count(m.attempts) then return nil, "attempts: not a count" end
  if not is_count(m.size) then return nil, "size: not a count" end
  if type(m.created) ~= "number" then return nil, "created: not a time" end
  if type(m.age_from) ~= "number" then return nil, "age_from: not a time" end
  if m.state ~= "failed" and type(m.next_attempt) ~= "number" then return nil, "next_attempt: not a time" end
  if m.server ~= nil and not valid_server(m.server) then return nil, "server: not a server table" end
  if m.last_error ~= nil and type(m.last_error) ~= "table" then return nil, "last_error: not an object" end
  if m.history ~= nil and type(m.history) ~= "table" then return nil, "history: not a list" end
  return true
end

-- Read and check an entry: meta | nil, err (kind "input", field naming
-- the file at fault). The message file must be there with the size the
-- metadata says (a truncated or replaced file is caught here).
local function read_entry(path, id)
  local text, err = read_file(path .. "/meta.json")
  if not text then return input_error("meta.json", err) end
  local m, jerr = json.decode(text)
  if jerr then return input_error("meta.json", "not valid JSON (" .. jerr .. ")") end
  local ok, why = check_meta(m, id)
  if not ok then return input_error("meta.json", why) end
  local size, serr = file_size(path .. "/message.eml")
  if not size then return input_error("message.eml", serr) end
  if size ~= m.size then
    return input_error("message.eml", ("%d octets, the metadata says %d (truncated or replaced)")
      :format(size, m.size))
  end
  return m
end

-- The error object of a stored error (or nil).
local function error_object(e)
  if type(e) ~= "table" then return nil end
  return core.error { kind = e.kind, message = e.message, code = e.code, enhanced = e.enhanced,
                      temporary = e.temporary and true or false, field = e.field }
end

-- A stored copy of an error object or a rejected-recipient record: plain
-- fields only, the server's text cut to a sensible length.
local function stored_error(e)
  local msg = tostring(e.message or "")
  if #msg > 500 then msg = msg:sub(1, 500) .. "..." end
  return { kind = e.kind or "smtp", message = msg, code = tonumber(e.code),
           enhanced = type(e.enhanced) == "string" and e.enhanced or nil,
           temporary = e.temporary and true or false }
end

---------------------------------------------------------------------------
-- servers: what is stored (never credentials) and how a run connects
---------------------------------------------------------------------------

-- what a run's server table adds to a stored one naming the same host and
-- port (auth too, as a list of mechanisms cannot be stored)
local RUNTIME = { "username", "password", "token", "auth", "trace", "socket" }

-- The part of a server table that may be written to disk.
local function storable_server(s)
  local out = {}
  for k, t in pairs(STORED) do
    if type(s[k]) == t then out[k] = s[k] end
  end
  out.port = out.port or 587
  if type(s.tls) == "table" then
    local tls = {}
    for k, t in pairs(TLS_STORED) do
      if type(s.tls[k]) == t then tls[k] = s.tls[k] end
    end
    out.tls = tls
  end
  return out
end

local function same_server(a, b)
  return type(a.host) == "string" and type(b.host) == "string" and
    a.host:lower() == b.host:lower() and (a.port or 587) == (b.port or 587)
end

-- The connect options for an entry: its stored server, with the
-- credentials (and trace, socket) of the run's server when that names the
-- same host and port; an entry stored without a server goes to the run's.
local function connect_options(stored, run_server)
  if not stored then return run_server end
  local o = {}
  for k, v in pairs(stored) do o[k] = v end
  if o.tls then
    local t = {}
    for k, v in pairs(o.tls) do t[k] = v end
    o.tls = t
  end
  if run_server and same_server(stored, run_server) then
    for _, k in ipairs(RUNTIME) do
      if run_server[k] ~= nil then o[k] = run_server[k] end
    end
  end
  return o
end

-- "host:port" for list, or nil.
local function server_name(s)
  if type(s) ~= "table" or type(s.host) ~= "string" then return nil end
  return s.host .. ":" .. tostring(s.port or 587)
end

---------------------------------------------------------------------------
-- the queue object
---------------------------------------------------------------------------

local function check_delays(fname, n, delays)
  if type(delays) ~= "table" or #delays == 0 then
    error(("bad argument #%d to '%s' (delays: a list of seconds expected)"):format(n, fname), 4)
  end
  for i, d in ipairs(delays) do
    if type(d) ~= "number" or d < 0 or d ~= d then
      error(("bad argument #%d to '%s' (delays[%d]: seconds >= 0 expected)"):format(n, fname, i), 4)
    end
  end
end

-- Check the option table o (argument n of fname) against allowed (name ->
-- type); misuse raises, as everywhere in the API.
local function check_opts(fname, n, o, allowed)
  local function bad(what)
    error(("bad argument #%d to '%s' (%s)"):format(n, fname, what), 4)
  end
  for k, v in pairs(o) do
    local want = allowed[k]
    if not want then bad("unknown option '" .. tostring(k) .. "'") end
    if type(v) ~= want then bad(("%s: %s expected, got %s"):format(k, want, type(v))) end
  end
  if o.delays then check_delays(fname, n, o.delays) end
  if o.max_age and not (o.max_age >= 0) then bad("max_age: seconds >= 0 expected") end
  if o.server and type(o.server.host) ~= "string" then
    bad("server.host: string expected, got " .. type(o.server.host))
  end
end

-- mailer.queue{ dir =, server =, max_age =, delays =, clock = } -> q
-- server: where entries go (its credentials are used, never stored);
-- max_age (seconds, default 5 days) and delays (seconds between attempts,
-- the last one repeating; default 1, 5, 15, 30 minutes, then hourly) are
-- the retry policy; clock() -> seconds since the epoch (tests).
function M.new(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'queue' (table expected, got " .. type(opts) .. ")", 2)
  end
  check_opts("queue", 1, opts, { dir = "string", server = "table", max_age = "number",
                              delays = "table", clock = "function" })
  if not opts.dir or opts.dir == "" then
    error("bad argument #1 to 'queue' (dir: a directory path expected)", 2)
  end
  local dir = opts.dir:gsub("(.)/+$", "%1")
  return setmetatable({ dir = dir, server = opts.server, max_age = opts.max_age or M.DEFAULT_MAX_AGE,
                        delays = opts.delays or M.DEFAULT_DELAYS, clock = opts.clock or core.q_now },
                      Queue)
end

function Queue:__tostring()
  return "mailer.Queue (" .. self.dir .. ")"
end

-- A new id: the UTC time to the microsecond (ids sort by age), then
-- random hex digits.
local function new_id(now)
  local secs = floor(now)
  return os.date("!%Y%m%dT%H%M%S", secs) .. ("%06dZ-"):format(floor((now - secs) * 1e6)) ..
    core.random_hex(6)
end

-- q:add(msg_or_table [, { server =, envelope = }]) -> id | nil, err
-- Renders the message into the queue; returns once it is on disk (fsynced).
function Queue:add(msg, opts)
  if type(msg) ~= "table" and type(msg) ~= "userdata" then
    error("bad argument #1 to 'add' (message table or mailer.Message expected, got " .. type(msg) .. ")", 2)
  end
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("bad argument #2 to 'add' (table expected, got " .. type(opts) .. ")", 2)
    end
    check_opts("add", 2, opts, { server = "table", envelope = "table" })
  end
  local m, err = mailer().message(msg)
  if not m then return nil, err end
  local from, rcpts = m:envelope()
  local env = opts and opts.envelope
  if env then
    if env.from ~= nil then
      if type(env.from) ~= "string" then return input_error("envelope.from", "expected an address") end
      from = env.from
    end
    if env.to ~= nil then
      rcpts = type(env.to) == "string" and { env.to } or env.to
      if type(rcpts) ~= "table" then return input_error("envelope.to", "expected addresses") end
      for i, a in ipairs(rcpts) do
        if type(a) ~= "string" then return input_error("envelope.to[" .. i .. "]", "expected an address") end
      end
    end
  end
  if type(from) ~= "string" then return input_error("from", "a sender address is required") end
  if #rcpts == 0 then return input_error("to", "no recipients") end
  local server = (opts and opts.server) or self.server

  local dir = self.dir
  local ok, merr = core.mkdir(dir)
  if not ok then return input_error("dir", merr) end
  local now = self.clock()
  local id = new_id(now)
  local tmp = dir .. "/.tmp-" .. id
  local function give_up(e)
    remove_tree(tmp)
    if core.is_error(e) then return nil, e end
    return input_error("dir", tostring(e))
  end
  ok, merr = core.mkdir(tmp)
  if not ok then return input_error("dir", merr) end
  -- held while we write, so that a run cleaning up never takes this for
  -- an add that was cut short
  local lock, lerr = core.q_lock(tmp)
  if not lock then return give_up(lerr) end
  local f, ferr = core.q_file(tmp .. "/message.eml")
  if not f then
    lock:unlock()
    return give_up(ferr)
  end
  local size = 0
  local wok, werr = pcall(function()
    for chunk in m:chunks() do
      local w, e = f:write(chunk)
      if not w then error(e, 0) end
      size = size + #chunk
    end
  end)
  if wok then wok, werr = f:sync() else f:close() end
  if not wok then
    lock:unlock()
    return give_up(werr)
  end
  -- the envelope must be one that can be sent: checked as the run will
  local raw, rerr = mailer().raw_message(tmp .. "/message.eml", { from = from, to = rcpts })
  if not raw then
    lock:unlock()
    return give_up(rerr)
  end
  local to = json.array()
  for i, a in ipairs(rcpts) do to[i] = a end
  local meta = {
    version = 1, id = id, from = from, to = to, delivered = json.array(), refused = json.array(),
    server = server and storable_server(server) or nil, size = size,
    created = now, age_from = now, state = "queued", attempts = 0, next_attempt = now,
    history = json.array(),
  }
  ok, merr = write_new(tmp .. "/meta.json", json.encode(meta))
  if ok then ok, merr = core.q_fsync_dir(tmp) end
  if ok then ok, merr = os.rename(tmp, dir .. "/" .. id) end
  lock:unlock()
  if not ok then return give_up(merr) end
  ok, merr = core.q_fsync_dir(dir)
  if not ok then return input_error("dir", merr) end   -- in place, but maybe not durable
  return id
end

-- The names in the queue directory that are entries (or pose as one:
-- everything not hidden), sorted, and the whole listing (for the clean-up
-- of run). nil, err when the directory cannot be read; a directory that
-- does not exist is an empty queue.
local function scan(self)
  local all, err, missing = core.q_scan(self.dir)
  if not all then
    if missing then return {}, {} end   -- a queue nothing was ever added to
    return input_error("dir", err)
  end
  local out = {}
  for _, e in ipairs(all) do
    if e.name:sub(1, 1) ~= "." then out[#out + 1] = e end
  end
  sort(out, function(a, b) return a.name < b.name end)
  return out, all
end

local exists = core.q_exists

-- Read entry e (from scan): meta | nil, err.
local function load(self, e)
  if not e.dir or not e.name:match(ID_PATTERN) then
    return input_error(e.name, "not a queue entry (" .. (e.dir and "bad name" or "not a directory") .. ")")
  end
  return read_entry(self.dir .. "/" .. e.name, e.name)
end

-- The list() record of an entry.
local function record(m)
  local delivered, refused = {}, {}
  for i, a in ipairs(m.delivered or {}) do delivered[i] = a end
  for i, r in ipairs(m.refused or {}) do refused[i] = error_object(r); refused[i].address = r.address end
  local to = {}
  for i, a in ipairs(m.to) do to[i] = a end
  return {
    id = m.id, state = m.state, attempts = m.attempts,
    next_attempt = m.state ~= "failed" and m.next_attempt or nil,
    last_error = error_object(m.last_error), outcome_unknown = m.outcome_unknown == true,
    expired = m.expired == true or nil,
    created = m.created, from = m.from, to = to, delivered = delivered, refused = refused,
    size = m.size, server = server_name(m.server),
  }
end

-- q:list() -> { entry, ... } in the order they were added, or nil, err.
-- entry: { id=, state="queued"|"deferred"|"failed", attempts=, next_attempt=,
-- last_error=, outcome_unknown=, created=, from=, to=, delivered=,
-- refused=, size=, server= }. An entry that cannot be read (corrupt,
-- truncated, unreadable, or something that is not an entry) is listed as
-- failed with corrupt = true and last_error saying what is wrong.
function Queue:list()
  local names, err = scan(self)
  if not names then return nil, err end
  local out = {}
  for _, e in ipairs(names) do
    local m, merr = load(self, e)
    if m then
      out[#out + 1] = record(m)
    elseif exists(self.dir .. "/" .. e.name) then   -- else delivered meanwhile
      out[#out + 1] = { id = e.name, state = "failed", corrupt = true, attempts = 0,
                        last_error = merr, to = {}, delivered = {}, refused = {} }
    end
  end
  return out
end

-- Lock entry id: lock | nil, err (kind "input": no such entry, or being
-- sent by a runner).
local function lock_entry(self, id, fname)
  if type(id) ~= "string" then
    error("bad argument #1 to '" .. fname .. "' (string expected, got " .. type(id) .. ")", 3)
  end
  if not id:match(ID_PATTERN) then return input_error("id", "not a queue entry id: " .. id) end
  local lock, err, why = core.q_lock(self.dir .. "/" .. id)
  if lock then return lock end
  if why == "busy" then return input_error("id", id .. " is being sent by a runner") end
  if why == "gone" then return input_error("id", "no entry " .. id) end
  return nil, core.error { kind = "input", field = "id", message = "id: " .. err, why = why }
end

-- Move the entry out of the queue (one atomic rename), then delete it.
local function discard(self, id)
  local trash = self.dir .. "/.trash-" .. id .. "-" .. core.random_hex(4)
  local ok, err = os.rename(self.dir .. "/" .. id, trash)
  if not ok then return nil, err end
  remove_tree(trash)
  return true
end

-- q:remove(id) -> true | nil, err: deletes the entry (whatever its state,
-- also a corrupt one); refused while a runner is sending it.
function Queue:remove(id)
  local lock, err = lock_entry(self, id, "remove")
  if not lock then
    -- not a directory: something else that list reported; remove the file
    if err.why == "error" and id:match(ID_PATTERN) then
      local ok = os.remove(self.dir .. "/" .. id)
      if ok then return true end
    end
    return nil, err
  end
  local ok, derr = discard(self, id)
  lock:unlock()
  if not ok then return input_error("id", derr) end
  return true
end

-- q:retry(id) -> true | nil, err: the entry is due now and its max_age
-- starts again; a failed entry is queued again, and the recipients that
-- were refused permanently get another chance (those that had it never
-- get it twice).
function Queue:retry(id)
  local lock, err = lock_entry(self, id, "retry")
  if not lock then return nil, err end
  local path = self.dir .. "/" .. id
  local m, merr = read_entry(path, id)
  if not m then
    lock:unlock()
    return nil, merr
  end
  local now = self.clock()
  if m.state == "failed" then
    for _, r in ipairs(m.refused or {}) do m.to[#m.to + 1] = r.address end
    m.refused = json.array()
  end
  m.state, m.next_attempt, m.age_from, m.expired = "queued", now, now, nil
  local ok, werr = replace_file(path, "meta.json", json.encode(m))
  lock:unlock()
  if not ok then return input_error("dir", werr) end
  return true
end

---------------------------------------------------------------------------
-- run
---------------------------------------------------------------------------

local function due(m, now)
  return m.state ~= "failed" and m.next_attempt <= now and #m.to > 0
end

-- Apply the outcome of one attempt to meta m: the new state ("sent",
-- "deferred" or "failed"). receipt or err is what conn:send returned.
local function apply(self, m, receipt, err, now, policy)
  m.attempts = m.attempts + 1
  m.outcome_unknown = nil
  local rejected = (receipt and receipt.rejected) or (err and err.rejected) or {}
  local accepted = receipt and receipt.accepted or {}
  m.delivered = m.delivered or json.array()
  m.refused = m.refused or json.array()
  -- per recipient: the accepted ones are done, the ones refused with a 5xx
  -- are dropped, the ones refused with a 4xx stay for the next attempt;
  -- when the message itself failed, every recipient not refused stays
  local by_address, temp_first = {}, nil
  for _, r in ipairs(rejected) do
    by_address[r.address] = r
    -- 530 "authentication required" is the runner's set-up, never the
    -- recipient's: try again (with credentials)
    if r.code == 530 then r.temporary = true end
  end
  local left, all_refused = json.array(), #rejected > 0
  if receipt then
    for _, a in ipairs(accepted) do m.delivered[#m.delivered + 1] = a end
    for _, r in ipairs(rejected) do
      if r.temporary then left[#left + 1] = r.address end
    end
  else
    for _, a in ipairs(m.to) do
      local r = by_address[a]
      if not r then all_refused = false end
      if not r or r.temporary then left[#left + 1] = a end
    end
  end
  for _, r in ipairs(rejected) do
    if r.temporary then
      temp_first = temp_first or r
    else
      local s = stored_error(r)
      s.address = r.address
      m.refused[#m.refused + 1] = s
    end
  end
  m.to = left
  local hist = { time = now, accepted = #accepted }
  local state, last
  if receipt or all_refused then
    if #m.to > 0 then
      state, last = "deferred", temp_first
    elseif #m.refused > 0 then
      state, last = "failed", (err or m.refused[#m.refused])
    else
      state = "sent"
    end
    if receipt then hist.code, hist.message = receipt.code, receipt.message end
  else
    last = err
    if err.kind == "smtp" and not err.temporary and err.code ~= 530 then
      state = "failed"           -- 5xx to MAIL, DATA or the final dot (530,
                                 -- "authentication required", is the runner's)
    elseif err.kind == "input" or err.kind == "unsupported" then
      state = "failed"           -- the message cannot go as it is
    else
      -- 4xx, network, timeout; TLS, authentication and protocol trouble
      -- are the server's or the set-up's, not the message's: try again
      state = "deferred"
      m.outcome_unknown = tostring(err.message):find("outcome unknown", 1, true) and true or nil
    end
  end
  if last then
    m.last_error = stored_error(last)
    if last.address then m.last_error.message = last.address .. ": " .. m.last_error.message end
    hist.kind, hist.code, hist.enhanced, hist.message =
      m.last_error.kind, m.last_error.code, m.last_error.enhanced, m.last_error.message
  end
  hist.outcome_unknown = m.outcome_unknown
  m.history = m.history or json.array()
  m.history[#m.history + 1] = hist
  while #m.history > HISTORY do table.remove(m.history, 1) end
  if state == "deferred" then
    local deadline = m.age_from + policy.max_age
    if now >= deadline then
      state, m.expired = "failed", true
    else
      local delays = policy.delays
      local delay = delays[min(m.attempts, #delays)]
      m.next_attempt = min(now + delay, deadline)
    end
  end
  m.state = state ~= "sent" and state or m.state
  return state
end

-- Remove .trash-* left by a deletion that was cut short, and .tmp-* left
-- by an add that was (unlocked and older than an hour: its add never
-- returned an id).
local function housekeeping(self, list, now)
  for _, e in ipairs(list or {}) do
    if e.dir and e.name:sub(1, 7) == ".trash-" then
      remove_tree(self.dir .. "/" .. e.name)
    elseif e.dir and e.name:sub(1, 5) == ".tmp-" and now - e.mtime > STALE_TMP then
      local path = self.dir .. "/" .. e.name
      local lock = core.q_lock(path)
      if lock then
        remove_tree(path)
        lock:unlock()
      end
    end
  end
end

-- A stable key for the connection an entry needs.
local function server_key(m)
  return m.server and json.encode(m.server) or ""
end

-- Send one claimed entry over the group's connection (made on first use;
-- g.conn_err once it could not be made): receipt | nil, err.
local function send_entry(g, path, m)
  local msg, err = mailer().raw_message(path .. "/message.eml", { from = m.from, to = m.to })
  if not msg then return nil, err end
  if not g.conn and not g.conn_err then
    local ok, conn, cerr = pcall(mailer().connect, g.copts)
    if not ok then return false, conn end   -- misuse in the run's server table: raised
    g.conn, g.conn_err = conn, cerr
  end
  if g.conn_err then return nil, g.conn_err end
  local ok, receipt, serr = pcall(g.conn.send, g.conn, msg)
  if not ok then
    receipt, serr = nil, core.is_error(receipt) and receipt or
      core.error { kind = "protocol", message = tostring(receipt), temporary = true }
  end
  if serr and (serr.kind ~= "smtp" or serr.code == 421) then
    -- the connection is gone or unusable: a new one for the next entry
    pcall(g.conn.close, g.conn)
    g.conn = nil
  end
  return receipt, serr
end

-- Claim entry id, send it if it is still due, record the outcome.
local function deliver(self, g, id, policy, stats)
  local path = self.dir .. "/" .. id
  local lock, lerr, why = core.q_lock(path)
  if not lock then
    if why == "busy" then
      stats.busy = stats.busy + 1
    elseif why == "error" then   -- e.g. a file system without flock: say so
      stats.errors = stats.errors or {}
      stats.errors[#stats.errors + 1] = core.error { kind = "input", field = "dir",
        message = "dir: cannot claim " .. id .. ": " .. tostring(lerr) }
    end
    return   -- "gone": another runner delivered or removed it meanwhile
  end
  local m = read_entry(path, id)
  if not m then
    lock:unlock()
    stats.corrupt = stats.corrupt + 1
    return
  end
  if not due(m, self.clock()) then   -- another runner got to it first
    lock:unlock()
    return
  end
  local receipt, err = send_entry(g, path, m)
  if receipt == false then
    lock:unlock()
    error(err, 0)
  end
  local state = apply(self, m, receipt, err, self.clock(), policy)
  local ok, werr
  if state == "sent" then
    ok, werr = discard(self, id)
  else
    ok, werr = replace_file(path, "meta.json", json.encode(m))
  end
  lock:unlock()
  if ok then
    stats[state] = stats[state] + 1
  else
    -- the outcome could not be recorded: the entry stays as it was and is
    -- sent again (at least once)
    stats.errors = stats.errors or {}
    stats.errors[#stats.errors + 1] = core.error { kind = "input", field = "dir",
      message = "dir: " .. id .. ": the outcome could not be recorded: " .. tostring(werr) }
    stats.deferred = stats.deferred + 1
  end
end

-- q:run{ max_age =, delays =, server =, limit = } -> { sent=, deferred=,
-- failed=, busy=, corrupt= [, errors=] } | nil, err
-- Delivers every entry that is due, oldest first, one connection per
-- server. sent: entries delivered to all their recipients; deferred:
-- entries to try again; failed: entries that failed for good in this
-- run; busy: entries another runner was sending; corrupt: entries that
-- could not be read (left as they are, see list); errors: what kept
-- entries from being tried or their outcome from being recorded.
function Queue:run(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("bad argument #1 to 'run' (table expected, got " .. type(opts) .. ")", 2)
  end
  check_opts("run", 1, opts, { max_age = "number", delays = "table", server = "table", limit = "number" })
  local policy = { max_age = opts.max_age or self.max_age, delays = opts.delays or self.delays }
  local run_server = opts.server or self.server
  local stats = { sent = 0, deferred = 0, failed = 0, busy = 0, corrupt = 0 }
  local names, all = scan(self)
  if not names then return nil, all end
  housekeeping(self, all, self.clock())

  -- what is due, from an unlocked look (checked again under the lock)
  local now = self.clock()
  local due_list = {}
  for _, e in ipairs(names) do
    local m = load(self, e)
    if not m then
      if exists(self.dir .. "/" .. e.name) then   -- else delivered meanwhile
        stats.corrupt = stats.corrupt + 1
      end
    elseif due(m, now) then
      due_list[#due_list + 1] = m
    end
  end
  sort(due_list, function(a, b)
    if a.created ~= b.created then return a.created < b.created end
    return a.id < b.id
  end)
  -- one group (and connection) per server, in the order of their oldest entry
  local groups, order = {}, {}
  for i = 1, min(#due_list, opts.limit or #due_list) do
    local m = due_list[i]
    local key = server_key(m)
    if not groups[key] then
      groups[key] = { copts = connect_options(m.server, run_server) }
      order[#order + 1] = key
    end
    local g = groups[key]
    g[#g + 1] = m.id
  end

  for _, key in ipairs(order) do
    local g = groups[key]
    if not g.copts then
      -- nowhere to send these: left as they are, and said so
      stats.errors = stats.errors or {}
      stats.errors[#stats.errors + 1] = core.error { kind = "input", field = "server",
        message = ("server: %d entries were added without a server, and none was given " ..
                   "(mailer.queue{ server = } or run{ server = })"):format(#g) }
    else
      local ok, err = pcall(function()
        for _, id in ipairs(g) do deliver(self, g, id, policy, stats) end
      end)
      if g.conn then pcall(g.conn.close, g.conn) end
      if not ok then error(err, 0) end
    end
  end
  return stats
end

return M
