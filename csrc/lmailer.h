/* lmailer.h - internal header shared by the Lua binding files (lmailer*.c,
 * lsocket.c).
 * Only binding files include lua.h; the core (everything else in csrc/)
 * never does. */
#ifndef LMAILER_H
#define LMAILER_H

#include <lua.h>
#include <lauxlib.h>

#include "mlr_common.h"

/* Lua 5.1 / LuaJIT compatibility shims. */
#if LUA_VERSION_NUM < 502
#define lua_rawlen lua_objlen
/* LuaJIT 2.1 already has luaL_setfuncs, luaL_testudata and luaL_newlib
 * (its lauxlib.h defines luaL_newlibtable along with them); Lua 5.1 has
 * none of the three, so the binding brings its own under private names. */
#ifndef luaL_newlibtable
#define MLR_COMPAT_AUXLIB 1
#define luaL_setfuncs(L, l, n) mlr_compat_setfuncs(L, l, n)
void mlr_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
#define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
#define luaL_testudata(L, idx, tname) mlr_compat_testudata(L, idx, tname)
void *mlr_compat_testudata(lua_State *L, int idx, const char *tname);
#endif
#endif
#if LUA_VERSION_NUM < 504
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata(L, sz)
#endif

/* Push an error object (a table with metatable mailer.Error) built from
 * the fields given; NULL strings and negative code are left out. */
void mlr_push_error(lua_State *L, const char *kind, const char *message,
                    const char *field, int code, const char *enhanced,
                    int temporary);
/* Push nil and an error object; returns 2 (for "return mlr_fail(...)"). */
int mlr_fail(lua_State *L, const char *kind, const char *message, const char *field);

/* The allocator of the Lua state, for the core. */
void mlr_lua_alloc(lua_State *L, mlr_alloc *a);

/* Uservalue access (one table per userdata) across Lua versions:
 * mlr_setuv pops a table and stores it; mlr_getuv pushes it. */
#if LUA_VERSION_NUM >= 504
#define mlr_setuv(L, idx) lua_setiuservalue(L, idx, 1)
#define mlr_getuv(L, idx) lua_getiuservalue(L, idx, 1)
#elif LUA_VERSION_NUM >= 502
#define mlr_setuv(L, idx) lua_setuservalue(L, idx)
#define mlr_getuv(L, idx) lua_getuservalue(L, idx)
#else
#define mlr_setuv(L, idx) lua_setfenv(L, idx)
#define mlr_getuv(L, idx) lua_getfenv(L, idx)
#endif

struct mlr_msg;
struct mlr_render;
/* The core message behind a finished mailer.Message userdata at idx
 * (raises when idx is not one, or is closed). */
struct mlr_msg *mlr_lua_msg_use(lua_State *L, int idx);
/* Push the Lua source that rendering r waits for (MLR_RENDER_NEED), taken
 * from the user value of the message at idx; nil when there is none. */
void mlr_lua_push_needed(lua_State *L, int idx, const struct mlr_render *r);
/* Hand a push source's result to r: the values at first.. are what pcall
 * returned (ok, chunk | ok, nil [, err] | false, error); a chunk is kept
 * alive as field "chunk" of the table at uv. MLR_OK or the (sticky)
 * render error; MLR_ERR_STATE when r asked for nothing. */
int mlr_lua_supply(lua_State *L, struct mlr_render *r, int uv, int first);

struct mlr_sock;
/* The core socket behind the mailer.Socket at idx, for bindings that
 * write to it from C (mlr_sock_write with a negative timeout uses the
 * socket's send timeout); NULL when idx is not an open mailer.Socket.
 * Bytes that receive() buffered in the userdata are not visible there. */
struct mlr_sock *mlr_lua_tosocket(lua_State *L, int idx);
/* What the mailer.Socket at idx has received, as sock:receiveany would
 * return it but without a Lua string: the count (> 0) with *p set (valid
 * until the next read), 0 when the peer closed or the socket is closed,
 * or a negative mlr_err (MLR_ERR_TIMEOUT, ...) with err set. */
long mlr_lua_socket_recv(lua_State *L, int idx, const char **p, char *err, size_t errlen);

/* Registration of each binding part into the module table at the top. */
void mlr_open_message(lua_State *L);
void mlr_open_smtp(lua_State *L);
void mlr_open_socket(lua_State *L);
void mlr_open_queue(lua_State *L);

#endif
