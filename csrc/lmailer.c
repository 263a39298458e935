/* lmailer.c - the Lua module mailer.core: error objects, messages and
 * renderings.
 *
 * Messages are built by the wrapper (lua/mailer.lua) through the msg_*
 * builder functions, then finished; the finished mailer.Message userdata
 * offers envelope, header and size here, and render / chunks in Lua. C
 * never calls Lua and never keeps a lua_State: a Lua-function source is a
 * push source of the renderer, kept in the message's user value; when the
 * renderer needs its bytes, r:next() returns it, and the Lua caller calls
 * it (it may yield, raise or re-enter) and hands its bytes in with
 * r:supply(), which keeps the string alive in the rendering's user value
 * while the renderer reads it. */
#include "lmailer.h"
#include "mime_addr.h"
#include "mime_header.h"
#include "mime_message.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/rand.h>

#define MESSAGE_MT "mailer.Message"
#define RENDER_MT "mailer.Render"
#define ERROR_MT "mailer.Error"

#ifdef MLR_COMPAT_AUXLIB
void mlr_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

void *mlr_compat_testudata(lua_State *L, int idx, const char *tname)
{
    void *p = lua_touserdata(L, idx);
    if (p && lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2))
            p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}
#endif

/* ---- error objects ---- */

/* The length of the UTF-8 character starting at s[0] (at most n octets
 * available), or 0 when the octets there are not UTF-8. */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    size_t k = s[0] < 0x80 ? 1 : s[0] >= 0xC2 && s[0] <= 0xDF ? 2
             : s[0] >= 0xE0 && s[0] <= 0xEF ? 3 : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : 0;
    return k && k <= n && mlr_utf8_valid((const char *)s, k) ? k : 0;
}

/* Does s[0..n) hold anything mlr_add_escaped would change? */
static int needs_escape(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k;
    while (i < n) {
        if (u[i] < 0x20 || u[i] == 0x7F)
            return 1;
        k = utf8_char_len(u + i, n - i);
        if (k == 0 || (k == 2 && u[i] == 0xC2 && u[i + 1] < 0xA0))
            return 1;
        i += k;
    }
    return 0;
}

/* Add s[0..n) to b so that it stays on one line and cannot drive a
 * terminal: CR, LF and TAB as \r \n \t, other C0 controls, DEL and octets
 * that are not UTF-8 as \xHH, C1 controls (U+0080..U+009F) as \u00HH;
 * other UTF-8 text as it is. */
static void add_escaped(luaL_Buffer *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k;
    char e[7];
    while (i < n) {
        unsigned c = u[i];
        k = utf8_char_len(u + i, n - i);
        if (c == '\r' || c == '\n' || c == '\t') {
            e[0] = '\\';
            e[1] = c == '\r' ? 'r' : c == '\n' ? 'n' : 't';
            luaL_addlstring(b, e, 2);
        } else if (c < 0x20 || c == 0x7F || k == 0) {
            e[0] = '\\', e[1] = 'x', e[2] = hex[c >> 4], e[3] = hex[c & 15];
            luaL_addlstring(b, e, 4);
            k = 1;
        } else if (k == 2 && c == 0xC2 && u[i + 1] < 0xA0) {
            e[0] = '\\', e[1] = 'u', e[2] = '0', e[3] = '0';
            e[4] = hex[u[i + 1] >> 4], e[5] = hex[u[i + 1] & 15];
            luaL_addlstring(b, e, 6);
        } else {
            luaL_addlstring(b, s + i, k);
        }
        i += k ? k : 1;
    }
}

/* Push s[0..n) escaped as add_escaped does. */
static void push_escaped(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    if (!needs_escape(s, n)) {
        lua_pushlstring(L, s, n);
        return;
    }
    luaL_buffinit(L, &b);
    add_escaped(&b, s, n);
    luaL_pushresult(&b);
}

/* core.escape(s) -> s with control characters escaped (as in error texts),
 * for printing text from a server on a terminal or into a log. */
static int l_escape(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    push_escaped(L, s, n);
    return 1;
}

void mlr_push_error(lua_State *L, const char *kind, const char *message, const char *field,
                    int code, const char *enhanced, int temporary)
{
    lua_createtable(L, 0, 6);
    lua_pushstring(L, kind ? kind : "protocol");
    lua_setfield(L, -2, "kind");
    message = message ? message : "";
    push_escaped(L, message, strlen(message));
    lua_setfield(L, -2, "message");
    if (field && *field) {
        push_escaped(L, field, strlen(field));
        lua_setfield(L, -2, "field");
    }
    if (code >= 0) {
        lua_pushinteger(L, code);
        lua_setfield(L, -2, "code");
    }
    if (enhanced && *enhanced) {
        push_escaped(L, enhanced, strlen(enhanced));
        lua_setfield(L, -2, "enhanced");
    }
    lua_pushboolean(L, temporary);
    lua_setfield(L, -2, "temporary");
    luaL_getmetatable(L, ERROR_MT);
    lua_setmetatable(L, -2);
}

int mlr_fail(lua_State *L, const char *kind, const char *message, const char *field)
{
    lua_pushnil(L);
    mlr_push_error(L, kind, message, field, -1, NULL, 0);
    return 2;
}

/* tostring(err) -> "<kind> error[ <code>[ <enhanced>]]: <message>", always
 * one line: control characters are escaped, also in fields a caller set. */
static int error_tostring(lua_State *L)
{
    static const char *const keys[] = {"kind", "code", "enhanced", "message"};
    const char *v[4];
    size_t len[4], i;
    luaL_Buffer b;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    for (i = 0; i < 4; i++) {
        lua_getfield(L, 1, keys[i]);   /* at index 2 + i */
        v[i] = lua_isstring(L, -1) && (i != 1 || lua_isnumber(L, -1))
                   ? lua_tolstring(L, -1, &len[i]) : NULL;
    }
    luaL_buffinit(L, &b);
    if (v[0])
        add_escaped(&b, v[0], len[0]);
    else
        luaL_addstring(&b, "unknown");
    luaL_addstring(&b, " error");
    for (i = 1; i <= 2; i++)
        if (v[i]) {
            luaL_addchar(&b, ' ');
            add_escaped(&b, v[i], len[i]);
        }
    luaL_addstring(&b, ": ");
    if (v[3])
        add_escaped(&b, v[3], len[3]);
    luaL_pushresult(&b);
    return 1;
}

/* core.error(tbl) -> tbl with the error metatable (for the Lua side). */
static int l_error(lua_State *L)
{
    static const char *const keys[] = {"message", "field"};
    size_t i, n;
    luaL_checktype(L, 1, LUA_TTABLE);
    for (i = 0; i < 2; i++) {   /* one line, whatever the Lua side put in */
        const char *s = NULL;
        lua_getfield(L, 1, keys[i]);
        if (lua_type(L, -1) == LUA_TSTRING)   /* (n is set before needs_escape reads it) */
            s = lua_tolstring(L, -1, &n);
        if (s && needs_escape(s, n)) {
            push_escaped(L, s, n);
            lua_setfield(L, 1, keys[i]);
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, 1, "temporary");
    if (lua_isnil(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, 1, "temporary");
    }
    lua_pop(L, 1);
    lua_settop(L, 1);
    luaL_getmetatable(L, ERROR_MT);
    lua_setmetatable(L, 1);
    return 1;
}

/* core.is_error(v) -> true when v is an error object. */
static int l_is_error(lua_State *L)
{
    int r = 0;
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, ERROR_MT);
        r = lua_rawequal(L, -1, -2);
    }
    lua_pushboolean(L, r);
    return 1;
}

void mlr_lua_alloc(lua_State *L, mlr_alloc *a)
{
    a->fn = lua_getallocf(L, &a->ud);
}

/* ---- messages ---- */

/* A message's user value is a table: sources = { fn, ... } (by push id),
 * keep = { string, ... } (data and text strings it uses in place). */
typedef struct lmsg {
    mlr_msg *m;
    mlr_msg *zombie; /* closed, but kept until __gc: a rendering may be in flight */
    mlr_alloc alloc;
    unsigned nsources;
    int finished;
} lmsg;

/* Keep the string at idx alive as long as the message at index 1. */
static void keep_string(lua_State *L, int idx)
{
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    mlr_getuv(L, 1);
    lua_getfield(L, -1, "keep");
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 2);
}

static lmsg *check_lmsg(lua_State *L, int idx)
{
    lmsg *lm = luaL_checkudata(L, idx, MESSAGE_MT);
    if (!lm->m)
        luaL_error(L, "attempt to use a closed message");
    return lm;
}

/* Free everything a message holds; safe to call twice. */
static void lmsg_release(lmsg *lm)
{
    if (lm->m) {
        mlr_msg_free(lm->m);
        lm->m = NULL;
    }
    if (lm->zombie) {
        mlr_msg_free(lm->zombie);
        lm->zombie = NULL;
    }
}

static int msg_gc(lua_State *L)
{
    lmsg *lm = luaL_checkudata(L, 1, MESSAGE_MT);
    lmsg_release(lm);
    return 0;
}

/* msg:close() / __close: the message can no longer be used. Its memory
 * stays until __gc, because a rendering may be in flight (each keeps its
 * message alive) - even inside one of its own sources - and must not find
 * it freed; it fails with "closed" at its next step instead. Idempotent. */
static int msg_close(lua_State *L)
{
    lmsg *lm = luaL_checkudata(L, 1, MESSAGE_MT);
    if (lm->m && !lm->zombie) {
        lm->zombie = lm->m;
        lm->m = NULL;
    }
    return 0;
}

/* core.new_message() -> an empty, unfinished message */
static int l_new_message(lua_State *L)
{
    lmsg *lm = lua_newuserdatauv(L, sizeof *lm, 1);
    memset(lm, 0, sizeof *lm);
    luaL_getmetatable(L, MESSAGE_MT);
    lua_setmetatable(L, -2);
    lua_createtable(L, 0, 2);
    lua_newtable(L);
    lua_setfield(L, -2, "sources");
    lua_newtable(L);
    lua_setfield(L, -2, "keep");   /* strings the message uses in place */
    mlr_setuv(L, -2);
    mlr_lua_alloc(L, &lm->alloc);
    lm->m = mlr_msg_new(&lm->alloc);
    if (!lm->m)
        return luaL_error(L, "not enough memory");
    mlr_msg_borrow_strings(lm->m, 1);
    return 1;
}

/* Turn a builder result into Lua results: true, or nil and an error. */
static int builder_result(lua_State *L, lmsg *lm, int rc)
{
    const mlr_msg_error *e;
    if (rc == MLR_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (rc == MLR_ERR_NOMEM)
        return luaL_error(L, "not enough memory");
    e = mlr_msg_last_error(lm->m);
    lua_pushnil(L);
    mlr_push_error(L, "input", e->message, e->field, -1, NULL, 0);
    return 2;
}

static lmsg *check_builder(lua_State *L)
{
    lmsg *lm = check_lmsg(L, 1);
    if (lm->finished)
        luaL_error(L, "the message is already finished");
    return lm;
}

/* core.msg_address(m, role, address [, name], field) -> true | nil, err */
static int l_msg_address(lua_State *L)
{
    static const char *const roles[] = {"from", "sender", "reply_to", "to", "cc", "bcc", NULL};
    lmsg *lm = check_builder(L);
    int role = luaL_checkoption(L, 2, NULL, roles);
    size_t n, nn = 0;
    const char *s = luaL_checklstring(L, 3, &n);
    const char *name = luaL_optlstring(L, 4, NULL, &nn);
    const char *field = luaL_checkstring(L, 5);
    return builder_result(L, lm, mlr_msg_add_address(lm->m, role, s, n, name, nn, field));
}

/* core.msg_subject(m, s) */
static int l_msg_subject(lua_State *L)
{
    lmsg *lm = check_builder(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    return builder_result(L, lm, mlr_msg_set_subject(lm->m, s, n));
}

/* core.msg_date(m, time_or_string) */
static int l_msg_date(lua_State *L)
{
    lmsg *lm = check_builder(L);
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number t = lua_tonumber(L, 2);
        if (!(t >= -1e15 && t <= 1e15))
            return mlr_fail(L, "input", "date: time stamp out of range", "date");
        return builder_result(L, lm, mlr_msg_set_date_time(lm->m, (int64_t)t));
    } else {
        size_t n;
        const char *s = luaL_checklstring(L, 2, &n);
        return builder_result(L, lm, mlr_msg_set_date_string(lm->m, s, n));
    }
}

/* core.msg_message_id(m, id) */
static int l_msg_message_id(lua_State *L)
{
    lmsg *lm = check_builder(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    return builder_result(L, lm, mlr_msg_set_message_id(lm->m, s, n));
}

/* core.msg_header(m, name, value, field) */
static int l_msg_header(lua_State *L)
{
    lmsg *lm = check_builder(L);
    size_t nl, vl;
    const char *name = luaL_checklstring(L, 2, &nl);
    const char *v = luaL_checklstring(L, 3, &vl);
    const char *field = luaL_checkstring(L, 4);
    return builder_result(L, lm, mlr_msg_add_header(lm->m, name, nl, v, vl, field));
}

/* core.msg_body(m, "text"|"html", s) */
static int l_msg_body(lua_State *L)
{
    static const char *const kinds[] = {"text", "html", NULL};
    lmsg *lm = check_builder(L);
    int kind = luaL_checkoption(L, 2, NULL, kinds);
    size_t n;
    const char *s;
    mlr_src src;
    if (lua_istable(L, 3)) {   /* {path=} or {source=, size=}: streamed */
        memset(&src, 0, sizeof src);
        src.size = -1;
        lua_getfield(L, 3, "path");
        src.path = lua_tolstring(L, -1, &n);
        if (src.path && (n == 0 || strlen(src.path) != n))
            return mlr_fail(L, "input", "path: empty, or contains a NUL byte", kinds[kind]);
        lua_getfield(L, 3, "size");
        if (lua_isnumber(L, -1))
            src.size = (int64_t)lua_tonumber(L, -1);
        lua_getfield(L, 3, "source");
        if (!src.path && lua_isfunction(L, -1)) {   /* uservalue.sources[id] = fn */
            src.push = 1;
            src.push_id = ++lm->nsources;
            mlr_getuv(L, 1);
            lua_getfield(L, -1, "sources");
            lua_pushvalue(L, -3);
            lua_rawseti(L, -2, (lua_Integer)src.push_id);
            lua_pop(L, 2);
        }
        return builder_result(L, lm, mlr_msg_set_body_src(lm->m, kind, &src));
    }
    s = luaL_checklstring(L, 3, &n);
    keep_string(L, 3);   /* used in place when its line ends are CRLF already */
    return builder_result(L, lm, kind == 0 ? mlr_msg_set_text(lm->m, s, n)
                                           : mlr_msg_set_html(lm->m, s, n));
}

/* core.msg_part(m, spec, field) with spec = {path=|data=|source=,
 * content_type=, filename=, cid=, size=} (already checked by the wrapper) */
static int l_msg_part(lua_State *L)
{
    lmsg *lm = check_builder(L);
    mlr_src src;
    size_t fnl = 0, cidl = 0, ctl;
    const char *ct, *fname, *cid, *field;
    int rc;
    luaL_checktype(L, 2, LUA_TTABLE);
    field = luaL_checkstring(L, 3);
    memset(&src, 0, sizeof src);
    src.size = -1;
    lua_getfield(L, 2, "content_type");
    ct = luaL_checklstring(L, -1, &ctl);
    if (strlen(ct) != ctl)
        return mlr_fail(L, "input", "content_type contains a NUL byte", field);
    lua_getfield(L, 2, "filename");
    fname = luaL_optlstring(L, -1, NULL, &fnl);
    lua_getfield(L, 2, "cid");
    cid = luaL_optlstring(L, -1, NULL, &cidl);
    lua_getfield(L, 2, "path");
    src.path = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 2, "data");
    src.data = luaL_optlstring(L, -1, NULL, &src.len);
    if (src.data)
        keep_string(L, -1);   /* used in place, never copied */
    lua_getfield(L, 2, "size");
    if (lua_isnumber(L, -1))
        src.size = (int64_t)lua_tonumber(L, -1);
    lua_getfield(L, 2, "source");
    if (!lua_isnil(L, -1)) {   /* a push source: uservalue.sources[id] = fn */
        luaL_checktype(L, -1, LUA_TFUNCTION);
        src.push = 1;
        src.push_id = ++lm->nsources;
        mlr_getuv(L, 1);
        lua_getfield(L, -1, "sources");
        lua_pushvalue(L, -3);
        lua_rawseti(L, -2, (lua_Integer)src.push_id);
        lua_pop(L, 2);
    }
    if (src.path && src.path[0] == '\0')
        return mlr_fail(L, "input", "path is empty", field);
    if (src.path && strlen(src.path) != lua_rawlen(L, 7)) /* spec.path */
        return mlr_fail(L, "input", "path contains a NUL byte", field);
    rc = mlr_msg_add_part(lm->m, &src, ct, fname, fnl, cid, cidl, field);
    lua_settop(L, 3);
    return builder_result(L, lm, rc);
}

/* ---- DKIM signers ---- */

#define DKIM_MT "mailer.DkimSigner"

/* Make a core signer from the spec table at idx: {domain=, selector=,
 * key=, algorithm=, header_canon=, body_canon=, headers={...}, time=}
 * (checked by the wrapper). NULL with an error message on failure. */
static mlr_dkim *new_signer(lua_State *L, int idx, const mlr_alloc *a, int *rc, char *err,
                            size_t errlen)
{
    mlr_dkim_opts o;
    const char *names[MLR_DKIM_MAX_HEADERS];
    const char *alg, *hc, *bc;
    mlr_dkim *d;
    int top = lua_gettop(L);
    memset(&o, 0, sizeof o);
    lua_getfield(L, idx, "domain");
    o.domain = lua_tostring(L, -1);
    lua_getfield(L, idx, "selector");
    o.selector = lua_tostring(L, -1);
    lua_getfield(L, idx, "key");
    o.key = lua_tolstring(L, -1, &o.key_len);
    lua_getfield(L, idx, "algorithm");
    alg = lua_tostring(L, -1);
    o.algorithm = !alg ? 0 : !strcmp(alg, "ed25519-sha256") ? MLR_DKIM_ED25519_SHA256
                                                            : MLR_DKIM_RSA_SHA256;
    lua_getfield(L, idx, "header_canon");
    hc = lua_tostring(L, -1);
    lua_getfield(L, idx, "body_canon");
    bc = lua_tostring(L, -1);
    o.header_canon = hc && !strcmp(hc, "simple") ? MLR_DKIM_SIMPLE : MLR_DKIM_RELAXED;
    o.body_canon = bc && !strcmp(bc, "simple") ? MLR_DKIM_SIMPLE : MLR_DKIM_RELAXED;
    lua_getfield(L, idx, "time");
    o.time = lua_isnumber(L, -1) ? (int64_t)lua_tonumber(L, -1) : -1;
    lua_getfield(L, idx, "headers");
    if (lua_istable(L, -1)) {
        size_t i, n = lua_rawlen(L, -1);
        if (n > MLR_DKIM_MAX_HEADERS)
            n = MLR_DKIM_MAX_HEADERS + 1;   /* refused by the core */
        for (i = 0; i < n && i < MLR_DKIM_MAX_HEADERS; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i + 1);
            names[i] = lua_tostring(L, -1);   /* kept alive by the spec table */
            lua_pop(L, 1);
            if (!names[i])
                names[i] = "";
        }
        o.headers = names;
        o.nheaders = n;
    }
    d = mlr_dkim_new(a, &o, rc, err, errlen);
    lua_settop(L, top);
    return d;
}

/* Push the error of a failed new_signer (raises on out of memory). */
static int signer_error(lua_State *L, int rc, const char *err)
{
    char field[32] = "dkim";
    const char *colon = strchr(err, ':');
    char msg[320];
    if (rc == MLR_ERR_NOMEM)
        return luaL_error(L, "not enough memory");
    if (colon && colon - err < 20 && !memchr(err, ' ', (size_t)(colon - err)))
        snprintf(field, sizeof field, "dkim.%.*s", (int)(colon - err), err);
    snprintf(msg, sizeof msg, "dkim.%s", err);
    return mlr_fail(L, "input", msg, field);
}

/* core.msg_dkim(m, spec) -> true | nil, err: sign every rendering. */
static int l_msg_dkim(lua_State *L)
{
    lmsg *lm = check_builder(L);
    char err[256];
    int rc;
    mlr_dkim *d;
    luaL_checktype(L, 2, LUA_TTABLE);
    d = new_signer(L, 2, &lm->alloc, &rc, err, sizeof err);
    if (!d)
        return signer_error(L, rc, err);
    return builder_result(L, lm, mlr_msg_set_dkim(lm->m, d));
}

/* core.dkim_signer(spec) -> signer | nil, err: a signer for conn:send's
 * dkim option (the userdata owns the core signer). */
static int l_dkim_signer(lua_State *L)
{
    mlr_dkim **ud;
    mlr_alloc a;
    char err[256];
    int rc;
    luaL_checktype(L, 1, LUA_TTABLE);
    ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = NULL;
    luaL_getmetatable(L, DKIM_MT);
    lua_setmetatable(L, -2);
    mlr_lua_alloc(L, &a);
    *ud = new_signer(L, 1, &a, &rc, err, sizeof err);
    if (!*ud)
        return signer_error(L, rc, err);
    return 1;
}

static int signer_gc(lua_State *L)
{
    mlr_dkim **ud = luaL_checkudata(L, 1, DKIM_MT);
    mlr_dkim_free(*ud);
    *ud = NULL;
    return 0;
}

/* signer:dns_record() -> "v=DKIM1; k=...; p=..." (the TXT record to publish) */
static int signer_dns_record(lua_State *L)
{
    mlr_dkim **ud = luaL_checkudata(L, 1, DKIM_MT);
    mlr_buf b;
    mlr_alloc a;
    if (!*ud)
        return luaL_error(L, "attempt to use a freed signer");
    mlr_lua_alloc(L, &a);
    mlr_buf_init(&b, &a);
    if (mlr_dkim_dns_record(*ud, &b) != MLR_OK) {
        mlr_buf_free(&b);
        return luaL_error(L, "cannot export the public key");
    }
    lua_pushlstring(L, b.data, b.len);
    mlr_buf_free(&b);
    return 1;
}

/* core.msg_raw(m, path, field) -> true | nil, err: the message is that
 * file, sent as is (the addresses are only its envelope) */
static int l_msg_raw(lua_State *L)
{
    lmsg *lm = check_builder(L);
    size_t n;
    const char *path = luaL_checklstring(L, 2, &n);
    const char *field = luaL_optstring(L, 3, "path");
    if (n == 0 || strlen(path) != n)
        return mlr_fail(L, "input", "path: empty, or contains a NUL byte", field);
    return builder_result(L, lm, mlr_msg_set_raw(lm->m, path, field));
}

/* core.msg_finish(m) -> m | nil, err */
static int l_msg_finish(lua_State *L)
{
    lmsg *lm = check_builder(L);
    int rc = mlr_msg_finish(lm->m);
    if (rc != MLR_OK)
        return builder_result(L, lm, rc);
    lm->finished = 1;
    lua_settop(L, 1);
    return 1;
}

struct mlr_msg *mlr_lua_msg_use(lua_State *L, int idx)
{
    lmsg *lm = check_lmsg(L, idx);
    if (!lm->finished)
        luaL_argerror(L, idx, "message is not finished");
    return lm->m;
}

static lmsg *check_finished(lua_State *L)
{
    lmsg *lm = check_lmsg(L, 1);
    if (!lm->finished)
        luaL_error(L, "message is not finished");
    return lm;
}

/* Push the error of a failed rendering. */
static void push_render_error(lua_State *L, mlr_render *r, int rc)
{
    const char *msg = mlr_render_error(r);
    const char *field = NULL;
    char fieldbuf[64];
    const char *colon = strchr(msg, ':');
    if (colon && (size_t)(colon - msg) < sizeof fieldbuf) {
        memcpy(fieldbuf, msg, (size_t)(colon - msg));
        fieldbuf[colon - msg] = '\0';
        field = fieldbuf;
    }
    mlr_push_error(L, mlr_err_kind(rc), msg, field, -1, NULL, 0);
}

/* A rendering: its user value keeps the message alive (msg) and the
 * chunk a push source handed in last (chunk). */
typedef struct lrender {
    mlr_render *r;
    lmsg *lm;
} lrender;

static int render_gc(lua_State *L)
{
    lrender *lr = luaL_checkudata(L, 1, RENDER_MT);
    if (lr->r) {
        mlr_render_free(lr->r);
        lr->r = NULL;
    }
    return 0;
}

/* Push the source function with push id k of the message whose user value
 * table is at index uv (nil when there is none). */
static void push_source(lua_State *L, int uv, long k)
{
    lua_getfield(L, uv, "sources");
    if (lua_istable(L, -1))
        lua_rawgeti(L, -1, (lua_Integer)k);
    else
        lua_pushnil(L);
    lua_remove(L, -2);
}

/* Push the source that rendering r waits for, from the message at idx. */
void mlr_lua_push_needed(lua_State *L, int idx, const mlr_render *r)
{
    mlr_getuv(L, idx);
    push_source(L, lua_gettop(L), mlr_render_need(r));
    lua_remove(L, -2);
}

/* core.msg_check(msg): raises when msg is closed or not a message */
static int l_msg_check(lua_State *L)
{
    check_lmsg(L, 1);
    return 0;
}

/* core.is_message(v) -> true when v is a mailer.Message (open or closed) */
static int l_is_message(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, MESSAGE_MT) != NULL);
    return 1;
}

/* core.monotime() -> seconds on a monotonic clock (for deadlines) */
static int l_monotime(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* core.render(msg [, stepped]) -> a mailer.Render of a finished message */
static int l_render(lua_State *L)
{
    lmsg *lm = check_finished(L);
    lrender *lr = lua_newuserdatauv(L, sizeof *lr, 1);
    memset(lr, 0, sizeof *lr);
    luaL_getmetatable(L, RENDER_MT);
    lua_setmetatable(L, -2);
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "msg");
    mlr_setuv(L, -2);
    lr->lm = lm;
    lr->r = mlr_render_new(lm->m);
    if (!lr->r)
        return luaL_error(L, "not enough memory");
    mlr_render_set_stepped(lr->r, lua_toboolean(L, 2));
    return 1;
}

static lrender *check_render(lua_State *L)
{
    lrender *lr = luaL_checkudata(L, 1, RENDER_MT);
    if (!lr->r)
        luaL_error(L, "attempt to use a finished rendering");
    if (!lr->lm->m)   /* closed mid-rendering: an error, never a short message */
        luaL_error(L, "attempt to use a closed message");
    return lr;
}

/* r:next() -> bytes | nil (the end) | false, source (call it and supply its
 * result) | true (a slice of work done; call again) | nil, err */
static int render_next(lua_State *L)
{
    lrender *lr = check_render(L);
    const uint8_t *p;
    size_t n;
    int rc = mlr_render_next(lr->r, &p, &n);
    switch (rc) {
    case 1:
        lua_pushlstring(L, (const char *)p, n);
        return 1;
    case 0:
        mlr_render_free(lr->r);
        lr->r = NULL;
        lua_pushnil(L);
        return 1;
    case MLR_RENDER_NEED:
        lua_pushboolean(L, 0);
        mlr_getuv(L, 1);
        lua_getfield(L, -1, "msg");
        mlr_lua_push_needed(L, lua_gettop(L), lr->r);
        lua_replace(L, -3);
        lua_pop(L, 1);
        return 2;
    case MLR_RENDER_BUSY:
        lua_pushboolean(L, 1);
        return 1;
    default:
        lua_pushnil(L);
        push_render_error(L, lr->r, rc);
        mlr_render_free(lr->r);
        lr->r = NULL;
        return 2;
    }
}

/* Hand the result of a push source to the rendering r (the stack holds r
 * at idx, the user value table at uv): ok, chunk | ok, nil [, err] where
 * ok is false when the source raised. Returns MLR_OK or the render error. */
int mlr_lua_supply(lua_State *L, mlr_render *r, int uv, int first)
{
    int t = lua_type(L, first + 1);
    if (!lua_toboolean(L, first)) {   /* raised: the value is the error */
        const char *msg = lua_tostring(L, first + 1);
        char buf[230];
        if (!msg && luaL_callmeta(L, first + 1, "__tostring")) {
            msg = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
        snprintf(buf, sizeof buf, "raised an error: %.200s", msg ? msg : "(not a string)");
        mlr_render_supply_error(r, buf);
        return MLR_ERR_IO;
    }
    if (t == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, first + 1, &n);
        int rc = mlr_render_supply(r, (const uint8_t *)s, n, 0);
        if (rc == MLR_OK && n) {   /* the renderer borrows it until its next need */
            lua_pushvalue(L, first + 1);
            lua_setfield(L, uv, "chunk");
        }
        return rc;
    }
    if (t == LUA_TNIL || t == LUA_TNONE) {
        const char *msg = lua_tostring(L, first + 2);
        if (msg) {
            mlr_render_supply_error(r, msg);
            return MLR_ERR_IO;
        }
        return mlr_render_supply(r, NULL, 0, 1);
    }
    {
        char buf[120];
        snprintf(buf, sizeof buf, "returned a %s (expected a string, or nil at the end)",
                 lua_typename(L, t));
        mlr_render_supply_error(r, buf);
        return MLR_ERR_INPUT;
    }
}

/* r:supply(ok, chunk_or_nil [, err]) -> true | nil, err: the result of the
 * source that r:next() asked for, as pcall returned it. */
static int render_supply(lua_State *L)
{
    lrender *lr = check_render(L);
    int rc;
    lua_settop(L, 4);
    mlr_getuv(L, 1);
    rc = mlr_lua_supply(L, lr->r, 5, 2);
    if (rc == MLR_ERR_STATE)
        return luaL_error(L, "the rendering did not ask for source bytes");
    if (rc < 0) {
        lua_pushnil(L);
        push_render_error(L, lr->r, rc);
        mlr_render_free(lr->r);
        lr->r = NULL;
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* msg:envelope() -> from, {rcpt, ...} */
static int msg_envelope(lua_State *L)
{
    lmsg *lm = check_finished(L);
    size_t i, n = mlr_msg_env_count(lm->m);
    lua_pushstring(L, mlr_msg_env_from(lm->m));
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        lua_pushstring(L, mlr_msg_env_rcpt(lm->m, i));
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 2;
}

/* msg:header(name) -> rendered value (unfolded) | nil */
static int msg_header(lua_State *L)
{
    lmsg *lm = check_finished(L);
    size_t nl;
    const char *name = luaL_checklstring(L, 2, &nl);
    mlr_buf out;
    const char *v;
    mlr_buf_init(&out, &lm->alloc);
    v = mlr_msg_header(lm->m, name, nl, &out);
    if (v)
        lua_pushlstring(L, v, out.len);
    else
        lua_pushnil(L);
    mlr_buf_free(&out);
    return 1;
}

/* msg:message_id() -> the Message-ID field's value, or nil (a raw message) */
static int msg_message_id(lua_State *L)
{
    lmsg *lm = check_finished(L);
    const char *id = mlr_msg_message_id(lm->m);
    if (id)
        lua_pushstring(L, id);
    else
        lua_pushnil(L);
    return 1;
}

/* msg:size() -> exact rendered size in octets, or nil when a source has
 * no announced size */
static int msg_size(lua_State *L)
{
    lmsg *lm = check_finished(L);
    uint64_t s = mlr_msg_size(lm->m);
    if (s == 0)
        lua_pushnil(L);
    else
#if LUA_VERSION_NUM >= 503
        lua_pushinteger(L, (lua_Integer)s);
#else
        lua_pushnumber(L, (lua_Number)s);
#endif
    return 1;
}

static int msg_tostring(lua_State *L)
{
    lmsg *lm = luaL_checkudata(L, 1, MESSAGE_MT);
    lua_pushfstring(L, "mailer.Message (%p)%s", (void *)lm, lm->m ? "" : " (closed)");
    return 1;
}

static const luaL_Reg msg_methods[] = {
    {"envelope", msg_envelope}, {"header", msg_header}, {"size", msg_size},
    {"message_id", msg_message_id}, {NULL, NULL}};

static const luaL_Reg render_methods[] = {
    {"next", render_next}, {"supply", render_supply}, {NULL, NULL}};

static const luaL_Reg msg_meta[] = {
    {"__gc", msg_gc}, {"__close", msg_close}, {"__tostring", msg_tostring}, {NULL, NULL}};

/* core.mkdir(path) -> true | nil, message: creates missing directories
 * along the path (like mkdir -p), without a shell. */
static int l_mkdir(lua_State *L)
{
    size_t n, i;
    const char *path = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *copy;
    if (n == 0 || strlen(path) != n)
        return lua_pushnil(L), lua_pushliteral(L, "directory path is empty or has a NUL byte"), 2;
    copy = (char *)lua_newuserdatauv(L, n + 1, 0);
    memcpy(copy, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (i == n || copy[i] == '/') {
            char c = copy[i];
            copy[i] = '\0';
            if (mkdir(copy, 0777) != 0 && errno != EEXIST) {
                luaL_buffinit(L, &b);
                luaL_addstring(&b, "cannot create directory '");
                luaL_addstring(&b, copy);
                luaL_addstring(&b, "': ");
                luaL_addstring(&b, strerror(errno));
                luaL_pushresult(&b);
                lua_pushnil(L);
                lua_insert(L, -2);
                return 2;
            }
            copy[i] = c;
        }
    }
    {
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            lua_pushnil(L);
            lua_pushfstring(L, "'%s' is not a directory", path);
            return 2;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.random_hex(nbytes) -> 2*nbytes hex digits from the CSPRNG */
static int l_random_hex(lua_State *L)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[64];
    char out[128];
    lua_Integer n = luaL_checkinteger(L, 1), i;
    luaL_argcheck(L, n >= 1 && n <= 64, 1, "1 .. 64 bytes");
    if (RAND_bytes(rnd, (int)n) != 1)
        return luaL_error(L, "random generator failed");
    for (i = 0; i < n; i++) {
        out[2 * i] = hex[rnd[i] >> 4];
        out[2 * i + 1] = hex[rnd[i] & 15];
    }
    lua_pushlstring(L, out, (size_t)(2 * n));
    return 1;
}

/* core.envelope_address(s) -> s in its wire form | nil, why: an envelope
 * address checked with the rules of message addresses (mlr_addr_check)
 * and its international domain written as an A-label when the local part
 * is ASCII (mlr_addr_idna); "" (the null reverse-path) passes. */
static int l_envelope_address(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char why[200], out[MLR_ADDR_MAX + 1];
    size_t on = 0;
    int utf8, rc;
    mlr_buf b;
    if (n == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    rc = mlr_addr_check(s, n, &utf8, why, sizeof why);
    if (rc == MLR_OK) {
        /* nothing below may raise while b holds memory */
        mlr_buf_init(&b, mlr_default_alloc());
        rc = mlr_addr_idna(s, n, &b, &utf8, why, sizeof why);
        if (rc == MLR_OK && b.len <= MLR_ADDR_MAX)
            memcpy(out, b.data, on = b.len);
        else if (rc == MLR_OK)
            rc = MLR_ERR_INPUT, snprintf(why, sizeof why, "address is too long");
        mlr_buf_free(&b);
    }
    if (rc == MLR_ERR_NOMEM)
        return luaL_error(L, "not enough memory");
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushlstring(L, out, on);
    return 1;
}

static const luaL_Reg core_funcs[] = {
    {"error", l_error},
    {"escape", l_escape},
    {"envelope_address", l_envelope_address},
    {"mkdir", l_mkdir},
    {"random_hex", l_random_hex},
    {"is_error", l_is_error},
    {"new_message", l_new_message},
    {"msg_address", l_msg_address},
    {"msg_subject", l_msg_subject},
    {"msg_date", l_msg_date},
    {"msg_message_id", l_msg_message_id},
    {"msg_header", l_msg_header},
    {"msg_body", l_msg_body},
    {"msg_part", l_msg_part},
    {"msg_finish", l_msg_finish},
    {"msg_raw", l_msg_raw},
    {"render", l_render},
    {"msg_check", l_msg_check},
    {"is_message", l_is_message},
    {"monotime", l_monotime},
    {"msg_dkim", l_msg_dkim},
    {"dkim_signer", l_dkim_signer},
    {NULL, NULL}};

void mlr_open_message(lua_State *L)
{
    luaL_newmetatable(L, MESSAGE_MT);
    luaL_setfuncs(L, msg_meta, 0);
    luaL_newlib(L, msg_methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "message_methods");   /* the wrapper adds render and chunks */
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, RENDER_MT);
    lua_pushcfunction(L, render_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, render_gc);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, render_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, DKIM_MT);
    lua_pushcfunction(L, signer_gc);
    lua_setfield(L, -2, "__gc");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, signer_dns_record);
    lua_setfield(L, -2, "dns_record");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, ERROR_MT);
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_setfuncs(L, core_funcs, 0);
}

/* require "mailer.core" */
int luaopen_mailer_core(lua_State *L);
int luaopen_mailer_core(lua_State *L)
{
    lua_newtable(L);
    mlr_open_message(L);
    mlr_open_smtp(L);
    mlr_open_socket(L);
    mlr_open_queue(L);
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
