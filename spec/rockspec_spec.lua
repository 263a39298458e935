-- The rockspec must build every C file and install every Lua module of the
-- tree; this keeps it from drifting as files are added.
local compat = require "support.compat"

describe("rockspec", function()
  local env = {}
  local f = assert(io.open("rockspec/mailer-scm-1.rockspec", "rb"))
  local chunk = assert(compat.load(f:read("*a"), "rockspec", env))
  f:close()
  chunk()

  it("lists every csrc/*.c file in mailer.core", function()
    local listed = {}
    for _, s in ipairs(env.build.modules["mailer.core"].sources) do listed[s] = true end
    local p = io.popen("ls csrc/*.c")
    for f in p:lines() do assert.is_true(listed[f], f .. " is missing from the rockspec") end
    p:close()
  end)

  it("installs every Lua module under lua/", function()
    local mods = {}
    for name, v in pairs(env.build.modules) do
      if type(v) == "string" then mods[v] = name end
    end
    local p = io.popen("find lua -name '*.lua'")
    for f in p:lines() do
      local want = f:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.equal(want, mods[f], f .. " is missing from the rockspec")
    end
    p:close()
  end)

  it("declares OpenSSL and libidn2 as external dependencies, and links them", function()
    assert.is_table(env.external_dependencies.OPENSSL)
    assert.is_table(env.external_dependencies.LIBIDN2)
    local libs = table.concat(env.build.modules["mailer.core"].libraries, " ")
    assert.matches("idn2", libs)
    assert.matches("ssl", libs)
  end)
end)
