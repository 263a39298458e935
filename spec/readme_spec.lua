-- Every ```lua block of README.md runs, and every `print(...) --> text`
-- line prints that text (blanks collapsed; <...> matches anything), so the
-- documentation cannot rot.
local function blocks()
  local f = assert(io.open("README.md"))
  local text = f:read("a")
  f:close()
  local out = {}
  for code in text:gmatch("```lua\n(.-)```") do out[#out + 1] = code end
  return out
end

local function norm(s) return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")) end

local function matches(expected, got)
  local pat = "^" .. norm(expected):gsub("<[^>]*>", "\0"):gsub("%p", "%%%0"):gsub("%z", ".-") .. "$"
  pat = pat:gsub("%%%z", ".-")
  return norm(got):match(pat) ~= nil
end

describe("README examples", function()
  for i, code in ipairs(blocks()) do
    it("block " .. i .. " runs and prints what it says", function()
      local printed = {}
      local env = setmetatable({
        print = function(...)
          local t = table.pack(...)
          for k = 1, t.n do t[k] = tostring(t[k]) end
          printed[#printed + 1] = table.concat(t, "\t")
        end,
      }, { __index = _G })
      local chunk = assert(load(code, "README block " .. i, "t", env))
      chunk()
      local k = 0
      for line in code:gmatch("[^\n]+") do
        if line:match("^%s*print%(") then
          k = k + 1
          -- a remark in parentheses after two blanks is not part of the output
          local expected = line:match("%-%->%s*(.-)%s%s+%(.*%)$") or line:match("%-%->%s*(.*)$")
          if expected then
            assert.is_true(matches(expected, printed[k] or ""),
              ("line %q printed %q"):format(line, printed[k] or "nothing"))
          end
        end
      end
      if env.receipt and env.receipt.path then
        os.remove(env.receipt.path)
        os.remove((env.receipt.path:gsub("%.eml$", ".json")))
      end
    end)
  end
end)
