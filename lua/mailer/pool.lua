-- mailer.pool: connections to one server shared by many sends (API.md,
-- "Sockets and event loops"): at most `size` at once, each QUITs after
-- `max_messages`, message starts kept under `rate`, idle ones closed after
-- `idle_timeout`. pool:send_all runs up to `size` connections at once, each
-- pipelining its messages (conn:send_many) from one shared queue; results
-- come back in input order.
--
-- Where the tasks run (the "runtime", chosen when the pool is made):
--   nginx    ngx.thread, ngx.sleep, ngx.semaphore; cosockets
--   cqueues  the caller's controller (or one of our own, looped until done)
--   copas    copas threads (from plain Lua: we step copas until done)
--   c        no event loop to be had: one connection at a time, blocking
--            (send_all still pipelines, one round trip per message)
--
-- A pooled connection is checked before a message starts on it: a socket
-- that can be read without waiting (the C socket, the loop sockets) shows
-- a server that spoke (421) or closed while it idled, at no cost; one idle
-- for a second or more, or without that method (nginx cosockets), is asked
-- NOOP. A connection that fails either is replaced, never reported as the
-- message's failure.
local core = require "mailer.core"
local driver = require "mailer.driver"

local type, pairs, ipairs, pcall, error, tostring, setmetatable, getmetatable =
      type, pairs, ipairs, pcall, error, tostring, setmetatable, getmetatable
local remove, floor = table.remove, math.floor
local now = core.monotime

-- A connection idle this long (seconds) is asked NOOP before reuse.
local CHECK_AFTER = 1

local M = {}

---------------------------------------------------------------------------
-- runtimes
---------------------------------------------------------------------------

-- The sequential runtime: blocking sockets, no tasks.
local function plain_runtime(choice)
  return {
    name = "c", socket = choice or "c",
    run = function(fn) return fn() end,
    sleep = core.sleep,
  }
end

-- copas or cqueues (mailer.socket.<name> has the same shape).
local function loop_runtime(name)
  local loop = require("mailer.socket." .. name)
  return {
    name = name, socket = name, loop = loop,
    run = loop.run, sleep = loop.sleep, spawn = loop.spawn, event = loop.event,
  }
end

-- OpenResty: light threads; events on ngx.semaphore where lua-resty-core
-- has it, else a short sleep loop.
local function nginx_runtime()
  local ngx = rawget(_G, "ngx")
  local has_sema, semaphore = pcall(require, "ngx.semaphore")
  local function event()
    if has_sema then
      local s = semaphore.new(0)
      return {
        wait = function(_, timeout) return s:wait(timeout or 86400) == true end,
        signal = function() s:post(1) end,
      }
    end
    local ev = { count = 0 }
    function ev.wait(_, timeout)
      local dl = timeout and now() + timeout
      while ev.count == 0 do
        if dl and now() >= dl then return false end
        ngx.sleep(0.002)
      end
      ev.count = ev.count - 1
      return true
    end
    function ev.signal() ev.count = ev.count + 1 end
    return ev
  end
  return {
    name = "nginx", socket = "nginx",
    run = function(fn) return fn() end,
    sleep = function(s) ngx.sleep(s) end,
    spawn = function(fn) return ngx.thread.spawn(fn) end,
    event = event,
  }
end

-- The runtime for a `socket =` choice: runtime | nil, err.
local function choose(socket)
  if socket == nil then
    if driver.available() then return nginx_runtime() end
    local running = driver.running_loop()
    if running then return loop_runtime(running) end
    if require("mailer.socket.copas").available() then return loop_runtime("copas") end
    return plain_runtime()
  end
  if socket == "nginx" then return nginx_runtime() end
  if socket == "copas" or socket == "cqueues" then
    local usable, why = require("mailer.socket." .. socket).available()
    if not usable then
      return nil, core.error { kind = "unsupported", field = "socket",
        message = ("socket = %q: %s"):format(socket, why) }
    end
    return loop_runtime(socket)
  end
  if socket == "c" or socket == false then return plain_runtime("c") end
  if type(socket) == "function" then return plain_runtime(socket) end
  error("bad argument #1 to 'pool' (socket: expected \"c\", \"nginx\", \"copas\", \"cqueues\" " ..
        "or a function that returns a new socket, got " .. type(socket) .. ")", 4)
end

---------------------------------------------------------------------------
-- the pool
---------------------------------------------------------------------------

local Pool = {}
Pool.__index = Pool
Pool.__name = "mailer.Pool"

function Pool.__tostring(self)
  return ("mailer.Pool (%s, %s, %d open): %s"):format(self.closed and "closed" or "open",
    self.rt.name, self.open, self.id)
end

local pool_fields = { size = true, max_messages = true, rate = true, idle_timeout = true }

local function input_error(field, message)
  return nil, core.error { kind = "input", field = field, message = field .. ": " .. message }
end

local function is_count(v) return type(v) == "number" and v >= 1 and v == floor(v) end

-- mailer.pool{ connect options..., size =, max_messages =, rate = {messages =,
-- per =}, idle_timeout = } -> pool | nil, err
function M.new(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'pool' (table expected, got " .. type(opts) .. ")", 3)
  end
  for _, k in ipairs { "size", "max_messages", "idle_timeout" } do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then
      error(("bad argument #1 to 'pool' (%s: number expected, got %s)"):format(k, type(opts[k])), 3)
    end
  end
  if opts.rate ~= nil and type(opts.rate) ~= "table" then
    error("bad argument #1 to 'pool' (rate: table expected, got " .. type(opts.rate) .. ")", 3)
  end
  for _, k in ipairs { "messages", "per" } do
    local v = opts.rate and opts.rate[k]
    if v ~= nil and type(v) ~= "number" then
      error(("bad argument #1 to 'pool' (rate.%s: number expected, got %s)"):format(k, type(v)), 3)
    end
  end
  if type(opts.host) ~= "string" then
    error("bad argument #1 to 'pool' (host: string expected, got " .. type(opts.host) .. ")", 3)
  end
  local size = opts.size or 5
  if not is_count(size) then return input_error("size", "expected a whole number of connections, 1 or more") end
  local max_messages = opts.max_messages or 100
  if not (is_count(max_messages) or max_messages == math.huge) then
    return input_error("max_messages", "expected a whole number, 1 or more")
  end
  local idle_timeout = opts.idle_timeout or 30
  if not (idle_timeout > 0) then return input_error("idle_timeout", "expected a positive number of seconds") end
  local rate
  if opts.rate then
    local m, per = opts.rate.messages, opts.rate.per or 1
    if not is_count(m) then return input_error("rate.messages", "expected a whole number, 1 or more") end
    if not (per > 0) then
      return input_error("rate.per", "expected a positive number of seconds")
    end
    rate = { messages = m, per = per }
  end
  local rt, err = choose(opts.socket)
  if not rt then return nil, err end
  local conn_opts = {}
  for k, v in pairs(opts) do
    if not pool_fields[k] and k ~= "socket" then conn_opts[k] = v end
  end
  return setmetatable({
    opts = conn_opts, size = size, max_messages = max_messages, rate = rate,
    idle_timeout = idle_timeout, rt = rt,
    idle = {},      -- { conn =, count = messages started, since = when it went idle }, newest last
    open = 0,       -- connections open or being opened (idle ones included)
    waiters = {},   -- events of tasks waiting for a free connection, oldest first
    starts = {},    -- start times of the last rate.messages messages
    closed = false,
    id = tostring({}):match("0x%x+") or "?",
  }, Pool)
end

local function check_pool(self, fname)
  if getmetatable(self) ~= Pool then
    error(("bad argument #1 to '%s' (mailer.Pool expected)"):format(fname), 3)
  end
  if self.closed then error("attempt to use a closed pool", 3) end
end

-- Is the connection unusable (closed, or its engine failed and dropped
-- the socket)?
local function broken(conn)
  return conn.closed or conn.sock == nil
end

-- Wake the task that waits longest for a connection.
local function wake(self)
  local ev = remove(self.waiters, 1)
  if ev then ev:signal() end
end

-- QUIT and forget a connection.
local function discard(self, item)
  item.conn:close()
  self.open = self.open - 1
  wake(self)
end

-- Close idle connections past idle_timeout (taken out of the list first:
-- QUIT yields, and other tasks use the list meanwhile).
local function reap(self)
  local t, kept, old = now(), {}, {}
  for _, item in ipairs(self.idle) do
    if t - item.since >= self.idle_timeout then old[#old + 1] = item else kept[#kept + 1] = item end
  end
  if not old[1] then return end
  self.idle = kept
  for _, item in ipairs(old) do discard(self, item) end
end

-- May a message start on this idle connection?
local function usable(item)
  local conn = item.conn
  if broken(conn) then return false end
  local sock = conn.sock
  if sock.tryreceive then
    -- nothing may arrive on an idle connection: data is a 421 (or worse),
    -- an error or "closed" is a drop
    local data, err = sock:tryreceive(4096)
    if data or (err ~= "wantread" and err ~= "wantwrite") then return false end
    if now() - item.since < CHECK_AFTER then return true end
  end
  local ok, res = pcall(conn.noop, conn)
  return ok and res == true and not broken(conn)
end

-- A new connection, as mailer.connect makes it with the pool's options.
local function connect(self)
  local o = {}
  for k, v in pairs(self.opts) do o[k] = v end
  local s = self.rt.socket
  if type(s) == "function" then s = s() end
  o.socket = s
  return require("mailer.smtp").connect(o)
end

-- A connection for one or more messages: an idle one that passes the
-- check, a new one while fewer than size are open, or the next one
-- released. item | nil, err.
local function acquire(self)
  while true do
    if self.closed then
      return nil, core.error { kind = "input", message = "the pool was closed" }
    end
    reap(self)
    local item = remove(self.idle)
    if item then
      if usable(item) then return item end
      discard(self, item)
    elseif self.open < self.size then
      self.open = self.open + 1
      local ok, conn, err = pcall(connect, self)
      if not (ok and conn) then
        self.open = self.open - 1
        wake(self)
        if not ok then error(conn, 0) end
        return nil, err
      end
      return { conn = conn, count = 0, since = now() }
    elseif self.rt.event then
      local ev = self.rt.event()
      self.waiters[#self.waiters + 1] = ev
      ev:wait()
    else
      return nil, core.error { kind = "input", message =
        ("all %d connections of the pool are busy (a send from inside a callback of another?)"):format(self.size) }
    end
  end
end

-- Give a connection back: idle for the next message, or QUIT when it has
-- sent max_messages, broke, or the pool was closed.
local function release(self, item)
  local conn = item.conn
  if self.closed or broken(conn) or item.count >= self.max_messages then
    discard(self, item)
    return
  end
  item.since = now()
  self.idle[#self.idle + 1] = item
  wake(self)
end

-- The rate limit: the start times of the last rate.messages messages
-- (when each was handed to its connection), oldest first.

-- Forget starts older than rate.per; the number left.
local function rate_count(self, t)
  local starts = self.starts
  while starts[1] and t - starts[1] >= self.rate.per do remove(starts, 1) end
  return #starts
end

-- Count a start now if the rate allows one: true, or false.
local function rate_claim(self)
  if not self.rate then return true end
  local t = now()
  if rate_count(self, t) >= self.rate.messages then return false end
  self.starts[#self.starts + 1] = t
  return true
end

-- Sleep until the rate allows another start (without counting one).
local function rate_wait(self)
  if not self.rate then return end
  while true do
    local t = now()
    if rate_count(self, t) < self.rate.messages then return end
    self.rt.sleep(self.starts[1] + self.rate.per - t)
  end
end

-- Wait for a start and count it.
local function gate(self)
  repeat rate_wait(self) until rate_claim(self)
end

-- A mailer.Message from a message or message table: msg | nil, err.
local function to_message(v)
  if type(v) == "table" then return require("mailer").message(v) end
  if type(v) == "userdata" and tostring(v):match("^mailer%.Message") then return v end
  return nil, core.error { kind = "input", message = "not a message: " .. type(v) }
end

-- pool:send(msg [, opts]) -> receipt | nil, err (as conn:send)
function Pool:send(msg, opts)
  check_pool(self, "send")
  return self.rt.run(function()
    local item, err = acquire(self)
    if not item then return nil, err end
    gate(self)
    item.count = item.count + 1
    local ok, r, e = pcall(item.conn.send, item.conn, msg, opts)
    release(self, item)
    if not ok then error(r, 0) end
    return r, e
  end)
end

-- The messages of send_all: a queue over the caller's list or iterator,
-- shared by the workers. take() -> index, msg | nil at the end; entries
-- that are not messages get their result at once.
local function message_queue(self, nextf, results)
  local q = { n = 0, done = false, busy = false }
  local ahead_i, ahead_m
  local function pull()
    while not q.done do
      local ok, v = pcall(nextf)
      if not ok then
        q.done = true
        if results.callback_error == nil then results.callback_error = v end
        return nil
      end
      if v == nil then
        q.done = true
        return nil
      end
      q.n = q.n + 1
      local m, err = to_message(v)
      if m then return q.n, m end
      results[q.n] = { error = err }
    end
  end
  -- is there a message left? (fills the look-ahead; the caller's iterator
  -- runs in one task at a time, even when it yields)
  function q.peek()
    while q.busy do self.rt.sleep(0.001) end
    if ahead_i == nil and not q.done then
      q.busy = true
      ahead_i, ahead_m = pull()
      q.busy = false
    end
    return ahead_i ~= nil
  end
  function q.take()
    if not q.peek() then return nil end
    local i, m = ahead_i, ahead_m
    ahead_i, ahead_m = nil, nil
    return i, m
  end
  return q
end

-- One worker of send_all: it takes a message, then a connection, and
-- pipelines messages from the queue over it (conn:send_many) until the
-- connection has sent max_messages (QUIT, and another), the queue is empty,
-- or the rate says wait: then the messages in flight finish, the worker
-- sleeps, and goes on over the same connection. (Sleeping inside the
-- producer would hold up the message in flight.)
local function worker(self, q, results, opts)
  local item, first_i, first_m   -- the connection held; a message taken for it
  while true do
    if not first_i then first_i, first_m = q.take() end
    if not first_i then break end
    if not item then
      local err
      item, err = acquire(self)
      if not item then   -- no connection: this message fails with why
        results[first_i] = { error = err }
        first_i, first_m = nil, nil
      end
    end
    if item then
      rate_wait(self)
      local conn, map, stalled = item.conn, {}, false
      local function produce()
        if item.count >= self.max_messages or broken(conn) or self.closed then return nil end
        if not first_i and not q.peek() then return nil end
        if not rate_claim(self) then
          stalled = true
          return nil
        end
        local i, m = first_i, first_m
        if i then
          first_i, first_m = nil, nil
        else
          i, m = q.take()
          if not i then
            remove(self.starts)   -- (not taken after all)
            return nil
          end
        end
        item.count = item.count + 1
        map[#map + 1] = i
        return m
      end
      local ok, res = pcall(conn.send_many, conn, produce, opts)
      if not ok then
        release(self, item)
        error(res, 0)
      end
      for k, i in ipairs(map) do results[i] = res[k] end
      if res.callback_error ~= nil and results.callback_error == nil then
        results.callback_error = res.callback_error
      end
      if not stalled or broken(conn) then
        release(self, item)
        item = nil
      end
    end
  end
  if item then release(self, item) end
end

-- pool:send_all(list_or_iterator [, opts]) -> { receipt or {error = err}, ... }
-- in input order (as conn:send_many), over up to `size` connections at once.
function Pool:send_all(items, opts)
  check_pool(self, "send_all")
  local nextf
  if type(items) == "table" then
    local i, n = 0, #items
    nextf = function()
      i = i + 1
      if i <= n then return items[i] end
    end
  elseif type(items) == "function" then
    nextf = items
  else
    error("bad argument #1 to 'send_all' (table or function expected, got " .. type(items) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'send_all' (table expected, got " .. type(opts) .. ")", 2)
  end
  return self.rt.run(function()
    local results = {}
    local q = message_queue(self, nextf, results)
    local rt = self.rt
    if not (rt.spawn and self.size > 1) then
      worker(self, q, results, opts)
      return results
    end
    local live, failure = self.size, nil
    local done = rt.event()
    local function run_worker()
      local ok, err = pcall(worker, self, q, results, opts)
      if not ok and failure == nil then failure = err end
      live = live - 1
      if live == 0 then done:signal() end
    end
    for _ = 2, self.size do rt.spawn(run_worker) end
    run_worker()   -- one in the caller's own task
    while live > 0 do done:wait() end
    if failure ~= nil then error(failure, 0) end
    return results
  end)
end

-- pool:close() -> true: QUIT the idle connections now, the busy ones when
-- their messages are done. Idempotent.
function Pool:close()
  if getmetatable(self) ~= Pool then
    error("bad argument #1 to 'close' (mailer.Pool expected)", 2)
  end
  if self.closed then return true end
  self.closed = true
  local idle = self.idle
  self.idle = {}
  self.rt.run(function()
    for _, item in ipairs(idle) do discard(self, item) end
  end)
  while self.waiters[1] do wake(self) end
  return true
end
Pool.__close = Pool.close

return M
