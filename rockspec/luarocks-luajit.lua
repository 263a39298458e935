-- LuaRocks settings that build the mailer rock for LuaJIT 2.1 (Debian:
-- libluajit2-5.1-dev and luajit): LuaJIT's headers, and LuaJIT as the
-- interpreter of the `mailer` command the rock installs. Without them,
-- `luarocks --lua-version 5.1` compiles against the headers it is given
-- but wraps the command for lua5.1, which cannot load a module built for
-- LuaJIT ("undefined symbol: luaL_setfuncs"). Use:
--   LUAROCKS_CONFIG=rockspec/luarocks-luajit.lua luarocks --lua-version 5.1 make --local rockspec/mailer-scm-1.rockspec
-- (LUAROCKS_CONFIG stands in for your own ~/.luarocks/config-5.1.lua in that run.)
lua_interpreter = "luajit"
variables = {
  LUA_INCDIR = "/usr/include/luajit-2.1",
}
