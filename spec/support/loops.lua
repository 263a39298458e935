-- The event loops for the specs, with one way to run a task in each:
--
--   local loops = require "support.loops"
--   for _, L in ipairs(loops.list()) do   -- { name=, lib=, why= } for copas and cqueues
--                                          -- (lib: nil where mailer cannot use the loop)
--     if not L.lib then pending(L.name .. ": " .. L.why) end
--     L.run(fn)          -- run fn in a task of the loop until every task is done;
--     L.spawn(fn)        -- (from a task) start another task
--     L.sleep(seconds)   -- (from a task)
--   end
--
-- Debian installs copas (1.1.7) for Lua 5.1 and 5.2 only; its pure-Lua
-- files run on 5.3 and 5.4 as well, so the 5.2 directory is added to
-- package.path there. cqueues is built for 5.1, 5.3, 5.4 (and LuaJIT loads
-- the 5.1 one).
local M = {}

local function try(name)
  local ok, mod = pcall(require, name)
  if ok then return mod end
  return nil, mod
end

-- The copas module, or nil and why not.
function M.copas()
  local c = try("copas")
  if not c and (_VERSION == "Lua 5.3" or _VERSION == "Lua 5.4") and not rawget(_G, "jit")
      and not package.path:find("/usr/share/lua/5.2/", 1, true) then
    package.path = package.path .. ";/usr/share/lua/5.2/?.lua"
    c = try("copas")
  end
  if c then return c end
  return nil, "copas is not installed for " .. _VERSION .. " (Debian: lua-copas)"
end

-- The cqueues module, or nil and why not.
function M.cqueues()
  local cq = try("cqueues")
  if cq then return cq end
  return nil, "cqueues is not installed for " .. (rawget(_G, "jit") and "LuaJIT" or _VERSION) ..
    " (Debian: lua-cqueues)"
end

-- Tasks on copas: spawn(f) starts one; run(fn, step_timeout) spawns fn
-- and steps copas (select timeout step_timeout, 1 s by default) until
-- every task spawned is done; errors of any task raise.
local function copas_tasks(copas)
  local live, failure = 0, nil
  local t = {}
  function t.spawn(f)
    live = live + 1
    copas.addthread(function()
      local ok, err = pcall(f)
      if not ok and failure == nil then failure = err end
      live = live - 1
    end)
  end
  function t.run(fn, step_timeout)
    failure = nil
    t.spawn(fn)
    while live > 0 do copas.step(step_timeout or 1) end
    if failure ~= nil then error(failure, 0) end
  end
  return t
end

-- The same on a new cqueues controller.
local function cqueues_run(cqueues, fn)
  local cq = cqueues.new()
  local failure
  local function spawn(f)
    cq:wrap(function()
      local ok, err = pcall(f)
      if not ok and failure == nil then failure = err end
    end)
  end
  spawn(fn)
  local ok, err = cq:loop()
  if not ok then error(err, 0) end
  if failure ~= nil then error(failure, 0) end
end

-- { name=, lib=, why=, run=, spawn=, sleep=, step= } for each loop.
function M.list()
  local out = {}
  local copas, why = M.copas()
  if copas then   -- installed, but can mailer use it here?
    local usable, reason = require("mailer.socket.copas").available()
    if not usable then copas, why = nil, reason end
  end
  local c = { name = "copas", lib = copas, why = why }
  if copas then
    local t = copas_tasks(copas)
    c.run, c.spawn = t.run, t.spawn
    function c.sleep(s) require("mailer.socket.copas").sleep(s) end
  end
  out[#out + 1] = c
  local cqueues, why2 = M.cqueues()
  if cqueues then
    local usable, reason = require("mailer.socket.cqueues").available()
    if not usable then cqueues, why2 = nil, reason end
  end
  local q = { name = "cqueues", lib = cqueues, why = why2 }
  if cqueues then
    function q.run(fn) cqueues_run(cqueues, fn) end
    function q.spawn(f)
      cqueues.running():wrap(function() assert(pcall(f)) end)
    end
    function q.sleep(s) cqueues.sleep(s) end
  end
  out[#out + 1] = q
  return out
end

return M
