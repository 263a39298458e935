-- mailer.socket.cqueues: sockets and waiting for cqueues controllers.
-- A task waits with cqueues.poll on an object that names the C socket's
-- descriptor and the event, with the time left as timeout; descriptors
-- are cancelled (cqueues.cancel) when they close, as cqueues asks. TLS is
-- the C socket's (see mailer.socket.loop), so luaossl is not needed.
local core = require "mailer.core"
local loop = require "mailer.socket.loop"

local setmetatable, pcall, require, type, error = setmetatable, pcall, require, type, error
local now = core.monotime
local max = math.max

local M = { name = "cqueues" }

local lib   -- the cqueues module, false when it cannot be loaded

-- The cqueues module, or nil.
local function cqueues()
  if lib == nil then
    local ok, mod = pcall(require, "cqueues")
    lib = ok and type(mod) == "table" and mod or false
  end
  return lib or nil
end

-- Can cqueues be used here? true, or false and why not.
function M.available() return loop.usable("cqueues", cqueues() ~= nil) end

-- Is the caller a coroutine that a cqueues controller runs (so that
-- cqueues.poll yields to it)?
function M.inside()
  local cq = package.loaded.cqueues
  if type(cq) ~= "table" or not cq.running then return false end
  local controller, direct = cq.running()
  return controller ~= nil and direct == true
end

local adapter = { name = "cqueues" }

function adapter.wait(sock, ev, dl)
  local cq = cqueues()
  local w = sock.pollee
  if not w then
    w = {}
    sock.pollee = w
  end
  local fd = sock.c:getfd()
  w.pollfd, w.events = fd, ev
  cq.poll(w, max(dl - now(), 0))
  cq.cancel(fd)
end

function adapter.pause()
  cqueues().poll(0)
end

-- A new cosocket-shaped socket whose waits yield to the controller.
function M.socket() return loop.new(adapter) end

-- Sleep seconds (from a controller's coroutine).
function M.sleep(seconds) cqueues().sleep(max(seconds, 0)) end

local Event = {}
Event.__index = Event

-- An event: ev:wait([timeout]) -> true when signalled (a signal before the
-- wait is kept), false on timeout; ev:signal().
function M.event()
  cqueues()
  return setmetatable({ count = 0, cond = require("cqueues.condition").new() }, Event)
end

function Event:wait(timeout)
  local dl = timeout and now() + timeout
  while self.count == 0 do
    if dl and now() >= dl then return false end
    self.cond:wait(dl and max(dl - now(), 0))
  end
  self.count = self.count - 1
  return true
end

function Event:signal()
  self.count = self.count + 1
  self.cond:signal()
end

-- Start fn on the caller's controller.
function M.spawn(fn)
  return cqueues().running():wrap(fn)
end

local own   -- a controller for callers outside any

-- Run fn() on a controller and return what it returns: at once from a
-- controller's coroutine, else on a controller of our own, looped until
-- fn is done. Errors propagate.
function M.run(fn)
  if M.inside() then return fn() end
  local cq = cqueues()
  own = own or cq.new()
  local res
  own:wrap(function() res = { pcall(fn) } end)
  while not res do
    local ok, err = own:loop()
    if not ok then error(err, 0) end
  end
  if not res[1] then error(res[2], 0) end
  return res[2], res[3]
end

return M
