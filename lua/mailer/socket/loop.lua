-- mailer.socket.loop: the cosocket method set (connect, sslhandshake,
-- send, receiveany, settimeouts, close) over the C socket's steps that
-- never wait (tryconnect, tryhandshake, trysend, tryreceive), for event
-- loops. A loop adapter (mailer.socket.copas, mailer.socket.cqueues) says
-- how its task waits for a descriptor or a deadline; everything else is
-- here, once: deadlines per call as the C socket has them, and time
-- slices, so that a send that never has to wait (a fast server, a big
-- message) still lets the loop run its other tasks every few
-- milliseconds.
--
-- TLS is the C socket's own (OpenSSL, TLS 1.2+, chain and host-name
-- verification without partial wildcards, SNI, cafile/capath, client
-- certificates), so it is the same under every loop.
local core = require "mailer.core"

local setmetatable, type, concat = setmetatable, type, table.concat
local now = core.monotime

-- Seconds of work after which a task lets the loop run the others.
local SLICE = 0.004

local M = { SLICE = SLICE }

-- PUC Lua 5.1 cannot yield across pcall, and the driver calls the socket
-- (sslhandshake, for one) and the callbacks under pcall: a task there
-- could not wait.
local yield_across_pcall = _VERSION ~= "Lua 5.1" or rawget(_G, "jit") ~= nil

-- May the loop called name be used (loaded: could its module be loaded)?
-- true, or false and why not.
function M.usable(name, loaded)
  if not yield_across_pcall then
    return false, "PUC Lua 5.1 cannot yield across pcall (use Lua 5.2 or later, or LuaJIT)"
  end
  if not loaded then
    local hint = ""
    if name == "copas" and (_VERSION == "Lua 5.3" or _VERSION == "Lua 5.4") then
      -- Debian's lua-copas puts its Lua files where 5.1 and 5.2 look only
      hint = "; Debian installs it for Lua 5.1 and 5.2: add /usr/share/lua/5.2/?.lua to package.path"
    end
    return false, ("%s cannot be loaded (Debian: lua-%s%s)"):format(name, name, hint)
  end
  return true
end

local Sock = {}
Sock.__index = Sock
Sock.__name = "mailer.LoopSocket"

function Sock.__tostring(self)
  return ("mailer.LoopSocket (%s, %s)"):format(self.name, self.c:getfd() >= 0 and "open" or "closed")
end

-- M.new(loop) -> a socket for loop, a table with
--   name                   "copas", "cqueues", ...
--   wait(sock, ev, dl)     wait until sock:getfd() is ready for ev ("r" or
--                          "w") or the monotonic time dl passes
--   pause(sock)            let the loop's other tasks run, come back soon
--   done(sock)             (optional) the socket closed: free what wait kept
-- The C socket closes its descriptor itself when a step fails, so wait
-- must leave no trace of the descriptor in the loop when it returns.
function M.new(loop)
  return setmetatable({ c = core.socket(), loop = loop, name = loop.name,
                        tmo = { 30000, 30000, 30000 }, mark = now() }, Sock)
end

local function shut(self)
  self.c:close()
  if self.loop.done then self.loop.done(self) end
end

-- After work that did not wait: let the other tasks run when this one has
-- had its slice.
local function breathe(self)
  if now() - self.mark >= SLICE then
    self.loop.pause(self)
    self.mark = now()
  end
end

-- Wait for want ("wantread" or "wantwrite") until dl: true, or false when
-- dl has passed.
local function wait(self, want, dl)
  if now() >= dl then return false end
  self.loop.wait(self, want == "wantwrite" and "w" or "r", dl)
  self.mark = now()
  return true
end

-- sock:settimeouts(connect_ms, send_ms, read_ms) -> 1 (nil keeps one)
function Sock:settimeouts(c, s, r)
  local t = self.tmo
  t[1], t[2], t[3] = c or t[1], s or t[2], r or t[3]
  return 1
end

-- sock:settimeout(ms) -> 1: all three
function Sock:settimeout(ms) return self:settimeouts(ms, ms, ms) end

-- sock:settls{cafile=, capath=, certfile=, keyfile=} -> true | nil, msg, kind
function Sock:settls(t) return self.c:settls(t) end

-- sock:getfd() -> the descriptor, or -1
function Sock:getfd() return self.c:getfd() end

-- sock:connect(host, port [, opts]) -> 1 | nil, msg, kind (resolving the
-- name may block: getaddrinfo)
function Sock:connect(host, port)
  local dl = now() + self.tmo[1] / 1000
  if self.c:getfd() >= 0 then shut(self) end
  while true do
    local ok, err, kind = self.c:tryconnect(host, port)
    if ok then
      breathe(self)
      return 1
    end
    if err ~= "wantwrite" then
      return nil, err, kind
    end
    if not wait(self, err, dl) then
      shut(self)
      return nil, "timeout", "timeout"
    end
  end
end

-- sock:sslhandshake(session, servername, verify) -> true | nil, msg, kind
-- (session is ignored; verify nil means false, as in ngx_lua)
function Sock:sslhandshake(_, servername, verify)
  local dl = now() + self.tmo[1] / 1000
  while true do
    local ok, err, kind = self.c:tryhandshake(servername, verify and true or false)
    if ok then
      breathe(self)
      return true
    end
    if err ~= "wantread" and err ~= "wantwrite" then
      return nil, err, kind
    end
    if not wait(self, err, dl) then
      shut(self)
      return nil, "timeout", "timeout"
    end
  end
end

-- sock:send(data) -> #data | nil, msg, kind: all of it (a string or a
-- table of strings) within the send timeout; a failure closes the socket
-- (part of the data may be out)
function Sock:send(data)
  if type(data) == "table" then data = concat(data) end
  local dl = now() + self.tmo[2] / 1000
  local i, n = 1, #data
  while true do
    local j, want, kind = self.c:trysend(data, i)
    if not j then
      return nil, want, kind
    end
    if j >= n then
      breathe(self)
      return n
    end
    i = j + 1
    if not wait(self, want, dl) then
      shut(self)
      return nil, "timeout", "timeout"
    end
  end
end

-- sock:receiveany(max) -> data | nil, msg, kind: what has arrived, waiting
-- up to the read timeout (a timeout leaves the socket open)
function Sock:receiveany(max)
  local dl = now() + self.tmo[3] / 1000
  while true do
    local data, err, kind = self.c:tryreceive(max)
    if data then
      breathe(self)
      return data
    end
    if err ~= "wantread" and err ~= "wantwrite" then
      return nil, err, kind
    end
    if not wait(self, err, dl) then return nil, "timeout", "timeout" end
  end
end

-- sock:tryreceive(max): as the C socket's, never waits (the pool's check
-- of an idle connection)
function Sock:tryreceive(max) return self.c:tryreceive(max) end

-- sock:close() -> 1 (idempotent)
function Sock:close()
  shut(self)
  return 1
end

return M
