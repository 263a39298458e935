-- Spec helper: parse rendered messages with Python's email package
-- (policy.default) through spec/support/parse.py and return what it saw.
local json = require "dkjson"

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local PY = "env -u LD_PRELOAD -u ASAN_OPTIONS /usr/bin/python3"

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Write each string to a temporary file; returns the names and the names
-- quoted for a shell command line.
local function temp_files(list)
  local files, quoted = {}, {}
  for i, s in ipairs(list) do
    local name = os.tmpname()
    local f = assert(io.open(name, "wb"))
    f:write(s)
    f:close()
    files[i], quoted[i] = name, shell_quote(name)
  end
  return files, table.concat(quoted, " ")
end

-- Parse several raw messages at once; returns a list of result tables.
function M.parse_many(raws)
  local files, args = temp_files(raws)
  local p = assert(io.popen(PY .. " " .. shell_quote(here .. "/parse.py") .. " " .. args))
  local out = p:read("*a")
  p:close()
  for _, f in ipairs(files) do os.remove(f) end
  local res, _, err = json.decode(out, 1, json.null)
  assert(res, "parse.py output is not JSON: " .. tostring(err) .. "\n" .. out:sub(1, 500))
  return res
end

-- Parse one raw message.
function M.parse(raw)
  return M.parse_many({ raw })[1]
end

-- sha256 hex of a string, via Python (no Lua crypto in the test deps).
function M.sha256_many(list)
  local files, args = temp_files(list)
  local p = assert(io.popen(PY .. " -c " .. shell_quote(
    "import hashlib,sys\nfor n in sys.argv[1:]: print(hashlib.sha256(open(n,'rb').read()).hexdigest())") ..
    " " .. args))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  for _, f in ipairs(files) do os.remove(f) end
  return out
end

function M.sha256(s)
  return M.sha256_many({ s })[1]
end

return M
