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
      -- files an example writes in the current directory go to this run's
      -- own temp directory (the suites of several Luas run side by side)
      for _, name in ipairs { "big.bin", "spool" } do
        code = code:gsub('"' .. name:gsub("%p", "%%%0") .. '"',
          (("%q"):format(servers.tmpdir() .. "/" .. name):gsub("%%", "%%%%")))
      end
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

  -- The tables under "### Option reference", each as a list of rows
  -- { name, type, default, meaning }.
  local function option_tables()
    local section = assert(text:match("\n### Option reference\n(.-)\n#"), "README has no option reference")
    local tables, cur = {}, nil
    for line in (section .. "\n"):gmatch("([^\n]*)\n") do
      if line:sub(1, 1) == "|" then
        if not cur then cur = {}; tables[#tables + 1] = cur end
        if not line:find("^| Option |") and not line:find("^|%-") then
          local name, typ, default, meaning = line:match("^| `([%w_.]+)` | ([^|]-) | ([^|]-) | ([^|]-) |$")
          assert.truthy(name, "not a row of four cells: " .. line)
          for _, cell in ipairs { typ, default, meaning } do assert.is_true(#cell > 0, line) end
          cur[#cur + 1] = { name, typ, default, meaning }
        end
      else
        cur = nil
      end
    end
    return tables
  end

  local function names(rows)
    local out = {}
    for i, r in ipairs(rows) do out[i] = r[1] end
    table.sort(out)
    return out
  end

  it("has a row for every option the parser knows, and no other", function()
    local smtp = require "mailer.smtp"
    local t = option_tables()
    assert.are.equal(2, #t)
    local want = {}
    for _, k in ipairs(smtp.options.connect) do want[#want + 1] = k end
    for _, k in ipairs(smtp.options.tls) do want[#want + 1] = "tls." .. k end
    table.sort(want)
    assert.are.same(want, names(t[1]))
    assert.are.same(smtp.options.send, names(t[2]))
    -- each row once
    for _, rows in ipairs(t) do
      local seen = {}
      for _, r in ipairs(rows) do
        assert.is_nil(seen[r[1]], r[1] .. " twice")
        seen[r[1]] = true
      end
    end
  end)

  it("has each row of the comparison table once", function()
    local seen = {}
    local comparison = assert(text:match("\n## Compared with the other Lua mail libraries\n(.-)\n## "))
    for row in comparison:gmatch("\n| ([^|\n]-) |") do
      assert.is_nil(seen[row], "row '" .. row .. "' twice")
      seen[row] = true
    end
    assert.is_true(seen["Inside OpenResty"])
  end)
end)
