-- Portability helpers for the specs: the same spec files run on Lua 5.4,
-- 5.3, 5.1 and LuaJIT 2.1, so whatever a spec needs from a newer Lua
-- (utf8, table.pack, load with an environment, <close>) comes from here.
--
--   local compat = require "support.compat"
--   compat.lua            -- command running this Lua ("lua5.4", "luajit", ...)
--   compat.build_cpath    -- LUA_CPATH of the checkout's build for this Lua
--   compat.pack(...), compat.unpack(t [, i [, j]])
--   compat.utf8_char(cp), compat.utf8_len(s)   -- len: nil for invalid UTF-8
--   compat.load(code, name, env)                -- text chunks only
--   compat.has_close      -- true where `local x <close>` exists (5.4)
--   compat.execute(cmd)   -- os.execute with 5.2+ results: ok, "exit"|"signal", n
local M = {}

local char, byte = string.char, string.byte
local floor = math.floor

-- "5.4", "5.3", "5.1"; LuaJIT says "5.1"
local version = _VERSION:match("%d+%.%d+")

M.luajit = rawget(_G, "jit") ~= nil
M.version = M.luajit and "luajit" or version
M.lua = os.getenv("MAILER_LUA_BIN") or (M.luajit and "luajit" or "lua" .. version)
-- The build directories scripts/test uses: build/ for 5.4, build-lua5.1,
-- build-lua5.3 and build-luajit for the others (bin/mailer agrees).
M.build_dir = version == "5.4" and not M.luajit and "build"
  or (M.luajit and "build-luajit" or "build-lua" .. version)
M.build_cpath = M.build_dir .. "/?.so;;"
M.has_close = version == "5.4" and not M.luajit

M.pack = table.pack or function(...)
  return { n = select("#", ...), ... }
end

M.unpack = table.unpack or unpack

-- The UTF-8 encoding of code point cp (0 .. 0x10FFFF).
function M.utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
              0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

-- The number of characters in s, or nil when s is not valid UTF-8
-- (overlong forms, surrogates and values past U+10FFFF are invalid, as
-- for Lua 5.4's utf8.len).
function M.utf8_len(s)
  local i, n, len = 1, #s, 0
  while i <= n do
    local c = byte(s, i)
    local need, min, cp
    if c < 0x80 then need, cp = 0, c
    elseif c >= 0xC2 and c <= 0xDF then need, min, cp = 1, 0x80, c - 0xC0
    elseif c >= 0xE0 and c <= 0xEF then need, min, cp = 2, 0x800, c - 0xE0
    elseif c >= 0xF0 and c <= 0xF4 then need, min, cp = 3, 0x10000, c - 0xF0
    else return nil end
    for k = 1, need do
      local cc = byte(s, i + k)
      if not cc or cc < 0x80 or cc > 0xBF then return nil end
      cp = cp * 0x40 + (cc - 0x80)
    end
    if need > 0 and (cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF)) then
      return nil
    end
    i = i + need + 1
    len = len + 1
  end
  return len
end

-- os.execute(cmd) -> true|nil, "exit"|"signal", number on every Lua
-- (5.1 and LuaJIT return the raw wait status instead).
function M.execute(cmd)
  local a, how, code = os.execute(cmd)
  if type(a) ~= "number" then return a, how, code end
  if a % 256 == 0 then
    code = floor(a / 256)
    return code == 0 or nil, "exit", code
  end
  return nil, "signal", a % 128
end

-- Compile a text chunk with the given environment: function | nil, err.
function M.load(code, name, env)
  if version == "5.1" then
    if code:byte(1) == 27 then return nil, "binary chunks are not accepted" end
    local f, err = loadstring(code, name)
    if f and env then setfenv(f, env) end
    return f, err
  end
  if env == nil then return load(code, name, "t") end   -- a nil env would be _ENV = nil
  return load(code, name, "t", env)
end

return M
