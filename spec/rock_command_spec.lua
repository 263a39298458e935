-- The `mailer` command a rock installs runs on the Lua its module was
-- built for: README's LuaJIT route (LuaRocks with rockspec/luarocks-luajit.lua)
-- is run as written, into a scratch tree, and the installed command must
-- run under LuaJIT and work; the same script under lua5.1 (the interpreter
-- LuaRocks would have wrapped it for) must say what is wrong instead of a
-- stack trace. It builds the C module once more, so it runs only in the
-- plain Lua 5.4 run of the suite (not again under ASan or other Luas).
local servers = require "support.servers"
local compat = require "support.compat"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Run a shell command (sanitizer runtimes removed); exit code, output.
local function sh(cmd)
  local out = os.tmpname()
  local _, how, code = compat.execute("env -u LD_PRELOAD -u ASAN_OPTIONS sh -c " .. q(cmd) .. " >" .. out .. " 2>&1")
  local f = io.open(out, "rb")
  local text = f:read("*a")
  f:close()
  os.remove(out)
  return how == "exit" and code or 128 + code, text
end

local function have(cmd) return (sh("command -v " .. cmd)) == 0 end

local runnable = compat.version == "5.4" and not os.getenv("MAILER_UNDER_ASAN") and have("luarocks") and
  have("luajit") and have("lua5.1") and io.open("/usr/include/luajit-2.1/lua.h") ~= nil

describe("the rock's command", function()
  if not runnable then
    pending("needs Lua 5.4 without ASan, luarocks, luajit, lua5.1 and libluajit2-5.1-dev")
    return
  end

  local tree, out
  setup(function()
    local f = assert(io.open("README.md", "rb"))
    local readme = f:read("*a")
    f:close()
    local cmd = assert(readme:match("\n(LUAROCKS_CONFIG=rockspec/luarocks%-luajit%.lua luarocks [^\n]+)\n"),
                       "README has no LuaJIT route")
    -- in a copy of the sources (luarocks make writes its objects beside
    -- them), into a scratch tree instead of ~/.luarocks
    local src = servers.mkdir("rock-src")
    tree = servers.mkdir("rock-tree")
    assert.are.equal(0, (sh("cp -r bin csrc lua rockspec " .. q(src) .. " && rm -f " .. q(src) .. "/csrc/*.o")))
    local n
    cmd, n = cmd:gsub(" %-%-local ", " --tree " .. q(tree):gsub("%%", "%%%%") .. " ")
    assert.are.equal(1, n)
    local code
    code, out = sh("cd " .. q(src) .. " && " .. cmd)
    assert.are.equal(0, code, out)
  end)

  it("runs LuaJIT and works", function()
    local f = assert(io.open(tree .. "/bin/mailer", "rb"))
    local wrapper = f:read("*a")
    f:close()
    assert.matches("/luajit' ", wrapper, 1, true)
    local code, version = sh(q(tree .. "/bin/mailer") .. " --version")
    assert.are.equal(0, code, version)
    assert.matches("^mailer [%w.]+ %(LuaJIT 2%.1[^)]*%)\n$", version)
    local rcode, raw = sh(q(tree .. "/bin/mailer") .. " render --from a@example.com --to b@example.com --subject rock --text hi")
    assert.are.equal(0, rcode, raw)
    assert.matches("\r\nSubject: rock\r\n", raw, 1, true)
  end)

  it("says what is wrong when run by a Lua the module was not built for", function()
    local script = tree .. "/lib/luarocks/rocks-5.1/mailer/scm-1/bin/mailer"
    local code, text = sh("lua5.1 -e " .. q(("package.path=%q..package.path package.cpath=%q..package.cpath")
      :format(tree .. "/share/lua/5.1/?.lua;", tree .. "/lib/lua/5.1/?.so;")) .. " " .. q(script) .. " --version")
    assert.are.equal(1, code)
    assert.matches("^mailer: the mailer.core module found was built for another Lua than the one running " ..
                   "this command %(Lua 5%.1%): undefined symbol: [%w_]+\nmailer: install the rock for this Lua, " ..
                   "or, for LuaJIT, with LUAROCKS_CONFIG=rockspec/luarocks%-luajit%.lua %(README: Installing%)\n$", text)
    assert.is_nil(text:find("stack traceback", 1, true))
  end)
end)
