-- mailer.socket.copas: sockets and waiting for copas threads, with what
-- copas 1.x (Debian's 1.1.7) and 4.x share: copas.addthread, copas.step,
-- copas.receive / copas.send on objects with getfd (and dirty) for its
-- select loop. Nothing here needs copas' timers, which 1.x does not have.
--
-- A task waits through a "waker": an object in copas' read set whose
-- descriptor (core.waiter(): epoll + timerfd, Linux) becomes readable when
-- the socket is ready or the deadline passes. So a stalled server still
-- times out while the host sits in copas.loop(), and sleeping, pausing and
-- being signalled are one mechanism. Where core.waiter is missing, the
-- socket itself goes into the read or write set, dirty() reports a passed
-- deadline, and time waits use copas.sleep (copas 2 and later).
local core = require "mailer.core"
local loop = require "mailer.socket.loop"

local setmetatable, pcall, require, type = setmetatable, pcall, require, type
local now = core.monotime
local max = math.max

local M = { name = "copas" }

local lib   -- the copas module, false when it cannot be loaded

-- The copas module, or nil.
local function copas()
  if lib == nil then
    local ok, mod = pcall(require, "copas")
    lib = ok and type(mod) == "table" and mod or false
  end
  return lib or nil
end

-- Can copas be used here? true, or false and why not.
function M.available() return loop.usable("copas", copas() ~= nil) end

-- Is the caller a coroutine copas can resume (a copas thread)? copas 1.x
-- cannot tell its threads from others: any coroutine counts once copas is
-- loaded.
function M.inside()
  if not package.loaded.copas then return false end
  local co, main = coroutine.running()
  return co ~= nil and not main
end

---------------------------------------------------------------------------
-- wakers
---------------------------------------------------------------------------

local Waker = {}
Waker.__index = Waker

local function new_waker()
  local w = setmetatable({ armed = false, fd = -1 }, Waker)
  if core.waiter then w.waiter = core.waiter() end
  return w
end

-- What copas' select asks of the objects it waits for.
function Waker:getfd()
  if self.waiter then return self.waiter:getfd() end
  return self.fd
end

-- (without a waiter) a passed deadline counts as ready
function Waker:dirty()
  return not self.waiter and self.deadline ~= nil and now() >= self.deadline
end

-- copas.receive / copas.send call these: "not yet" once, then done.
function Waker:receive()
  if self.armed then
    self.armed = false
    return nil, "timeout"
  end
  return ""
end

function Waker:send(_, i)
  if self.armed then
    self.armed = false
    return nil, "timeout", (i or 1) - 1
  end
  return 1
end

-- copas closes the object that woke a thread which then ended; a waker
-- outlives its thread
function Waker:close() end
function Waker:settimeout() end

-- From a copas thread: wait until fd (nil: none) is ready for ev ("r" or
-- "w"), or until the monotonic time dl (nil: none), or a signal.
function Waker:wait(fd, ev, dl)
  local c = copas()
  self.deadline = dl
  if self.waiter then
    assert(self.waiter:arm(fd, ev, dl and max(dl - now(), 0)))
    self.armed = true
    c.receive(self)
  elseif fd and fd >= 0 then
    self.fd = fd
    self.armed = true
    if ev == "w" then c.send(self, "x") else c.receive(self) end
  elseif c.sleep then
    c.sleep(dl and max(dl - now(), 0) or 0.01)
  else
    error("copas 1.x without epoll/timerfd cannot wait for time alone", 2)
  end
end

-- Wake a waiting thread at once.
function Waker:fire()
  if self.waiter then
    self.waiter:arm(nil, nil, 0)
  else
    self.deadline = now()
  end
end

-- One waker per coroutine for sleeps (weak: they go with their threads).
local wakers = setmetatable({}, { __mode = "k" })
local function my_waker()
  local co = coroutine.running()
  local w = wakers[co]
  if not w then
    w = new_waker()
    wakers[co] = w
  end
  return w
end

---------------------------------------------------------------------------
-- sockets and tasks
---------------------------------------------------------------------------

local adapter = { name = "copas" }

function adapter.wait(sock, ev, dl)
  local w = sock.waker
  if not w then
    w = new_waker()
    sock.waker = w
  end
  w:wait(sock.c:getfd(), ev, dl)
end

-- The socket closed: its waker's descriptors go now, not when the
-- collector gets to them (a pool opens and closes many connections).
function adapter.done(sock)
  local w = sock.waker
  if w and w.waiter then
    sock.waker = nil
    w.waiter:close()
  end
end

function adapter.pause(sock)
  local w = sock.waker or my_waker()
  w:wait(nil, nil, now())
end

-- A new cosocket-shaped socket whose waits yield to copas.
function M.socket() return loop.new(adapter) end

-- Sleep seconds (from a copas thread).
function M.sleep(seconds)
  my_waker():wait(nil, nil, now() + max(seconds, 0))
end

local Event = {}
Event.__index = Event

-- An event: ev:wait([timeout]) -> true when signalled (a signal before the
-- wait is kept), false on timeout; ev:signal().
function M.event() return setmetatable({ count = 0 }, Event) end

function Event:wait(timeout)
  local dl = timeout and now() + timeout
  while self.count == 0 do
    if dl and now() >= dl then return false end
    self.waker = self.waker or new_waker()
    self.waker:wait(nil, nil, dl or (not self.waker.waiter and now() + 0.01) or nil)
  end
  self.count = self.count - 1
  return true
end

function Event:signal()
  self.count = self.count + 1
  if self.waker then self.waker:fire() end
end

-- Start fn as a copas thread.
function M.spawn(fn)
  return copas().addthread(function() fn() end)
end

-- Run fn() as a copas thread and return what it returns: at once from a
-- copas thread, else by stepping copas (its other threads run too) until
-- fn is done. Errors propagate.
function M.run(fn)
  if M.inside() then return fn() end
  local c = copas()
  local done, res = false, nil
  c.addthread(function()
    res = { pcall(fn) }
    done = true
  end)
  while not done do c.step(1) end
  if not res[1] then error(res[2], 0) end
  return res[2], res[3]
end

return M
