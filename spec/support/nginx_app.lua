-- The handlers of the private nginx of support/nginx.lua (runs inside
-- nginx, LuaJIT). /run takes {code=, args=} as JSON, runs the Lua chunk
-- `code` with `args` as its argument in the content phase, and answers
-- {result = <what it returned>}: error objects become plain tables, so the
-- spec can look at kind, code, message.
local json = require "dkjson"

local M = {}

-- A JSON-safe copy of v (tables deep, error objects included; functions
-- and userdata as their tostring).
local function plain(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "table" and depth < 20 then
    local out = {}
    for k, x in pairs(v) do out[k] = plain(x, depth + 1) end
    return out
  elseif t == "function" or t == "userdata" or t == "thread" then
    return tostring(v)
  end
  return v
end

function M.run()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local file = ngx.req.get_body_file()
    if file then
      local f = io.open(file, "rb")
      body = f:read("*a")
      f:close()
    end
  end
  local req = json.decode(body or "")
  if type(req) ~= "table" or type(req.code) ~= "string" then
    ngx.status = 400
    ngx.say(json.encode { error = "expected {code=, args=}" })
    return
  end
  local chunk, err = loadstring(req.code, "=spec")
  if not chunk then
    ngx.status = 500
    ngx.say(json.encode { error = err })
    return
  end
  local ok, res = pcall(chunk, req.args or {})
  if not ok then
    ngx.status = 500
    ngx.say(json.encode { error = tostring(res) })
    return
  end
  ngx.say(json.encode { result = plain(res) })
end

-- In a phase that cannot yield (set_by_lua), which transport would
-- mailer.connect pick? "cosocket" or "c".
function M.picked()
  return require("mailer.resty").available() and "cosocket" or "c"
end

return M
