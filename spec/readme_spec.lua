-- Every ```lua block of README.md runs, and every `print(...) --> text`
-- line prints that text (blanks collapsed; <...> matches anything), so the
-- documentation cannot rot. Examples that talk to smtp.example.com:587 are
-- pointed at a local aiosmtpd (STARTTLS with a throwaway CA, AUTH for
-- alice/secret, nobody@example.com refused); blocks marked ```lua norun
-- need a real provider and are only compiled, and blocks marked ```lua copas
-- run where mailer can use copas (compiled elsewhere).
local servers = require "support.servers"
local compat = require "support.compat"
local loops = require "support.loops"
local function blocks()
  local f = assert(io.open("README.md"))
  local text = f:read("*a")
  f:close()
  local out = {}
  for tag, code in text:gmatch("```lua([^\n]*)\n(.-)```") do
    local run = not tag:find("norun")
    if tag:find("copas") then
      run = loops.copas() ~= nil and require("mailer.socket.copas").available() == true
    end
    out[#out + 1] = { code = code, run = run }
  end
  return out
end

local function norm(s) return (s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")) end

local function matches(expected, got)
  local pat = "^" .. norm(expected):gsub("<[^>]*>", "\0"):gsub("%p", "%%%0"):gsub("%z", ".-") .. "$"
  pat = pat:gsub("%%%z", ".-")
  return norm(got):match(pat) ~= nil
end

describe("README examples", function()
  local srv
  teardown(function() servers.stop_all() end)
  for i, block in ipairs(blocks()) do
    local code = block.code
    it("block " .. i .. (block.run and " runs and prints what it says" or " compiles"), function()
      if not block.run then
        assert(compat.load(code, "README block " .. i, {}))
        return
      end
      local printed = {}
      local env = setmetatable({
        print = function(...)
          local t = compat.pack(...)
          for k = 1, t.n do t[k] = tostring(t[k]) end
          printed[#printed + 1] = table.concat(t, "\t")
        end,
      }, { __index = _G })
      if code:find("smtp.gmail.com", 1, true) then
        -- an implicit-TLS aiosmtpd that takes "token-1" as the bearer token
        local g = servers.aiosmtpd { tls = "implicit", cert = "good",
          auth = { user = "me@gmail.com", password = "token-1" } }
        env.fetch_access_token = function() return "token-1" end
        local n
        code, n = code:gsub('host = "smtp%.gmail%.com", port = 465,',
          ('host = "localhost", port = %d, security = "tls", tls = { cafile = %q },'):format(g.port, g.cafile))
        assert.is_true(n > 0)
      end
      if code:find("smtp.example.com", 1, true) then
        srv = srv or servers.aiosmtpd { tls = "starttls", cert = "good",
          auth = { user = "alice", password = "secret" }, extensions = { "PIPELINING", "ENHANCEDSTATUSCODES" },
          reject_rcpt = { ["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: no such user" } }
        local n
        code, n = code:gsub('host = "smtp%.example%.com", port = 587, security = "starttls",',
          ('host = "localhost", port = %d, security = "starttls", tls = { cafile = %q },'):format(srv.port, srv.cafile))
        assert.is_true(n > 0, "an smtp.example.com example the spec cannot redirect")
      end
      local chunk = assert(compat.load(code, "README block " .. i, env))
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

describe("README text", function()
  local f = assert(io.open("README.md"))
  local text = f:read("*a")
  f:close()

  it("says RSET goes out only after a failed transaction", function()
    assert.is_nil(text:find("RSET between them", 1, true))
    assert.truthy(text:find("RSET only after a failed transaction", 1, true))
  end)

  it("has each row of the comparison table once", function()
    local seen = {}
    for row in text:gmatch("\n| ([^|\n]-) |") do
      assert.is_nil(seen[row], "row '" .. row .. "' twice")
      seen[row] = true
    end
    assert.is_true(seen["Inside OpenResty"])
  end)
end)
