/* lsocket.c - Lua binding of mlr_sock: mailer.Socket, a blocking TCP/TLS
 * socket with the method set of OpenResty's ngx.socket.tcp(), so that the
 * one Lua driver runs over it as it runs over a cosocket.
 *
 * Failures come back as cosockets have them: nil and "timeout", "closed"
 * (the peer closed, or the socket is not connected) or a one-line
 * message; then, our extension, the kind ("timeout", "network", "tls",
 * "input"). receive() puts the partial data before the kind. Misuse (bad
 * argument types) raises. The read buffer lives in the userdata, so
 * nothing malloc'd is held across a call that can raise. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "lmailer.h"
#include "transport.h"
#include "waiter.h"

#define SOCK_MT "mailer.Socket"
#define WAITER_MT "mailer.Waiter"
#define RBUF_SIZE 16384
#define DEFAULT_TIMEOUT 30000     /* ms, as lua_socket_*_timeout in nginx */
#define MAX_TIMEOUT_MS 2073600000 /* 24 days: far from int and poll() overflow */
#define SEND_BATCH 64             /* table pieces per core write */

typedef struct lsock {
    mlr_sock *s;       /* NULL once closed; connect makes a new one */
    mlr_alloc alloc;   /* s keeps a pointer to it: both live in this userdata */
    int tmo[3];        /* connect, send, read timeouts (ms); survive close() */
    size_t rpos, rlen; /* bytes received but not yet returned: rbuf[rpos, rlen) */
    char rbuf[RBUF_SIZE];
} lsock;

/* The socket userdata at index 1 (raises when it is not one). */
static lsock *check_sock(lua_State *L)
{
    return luaL_checkudata(L, 1, SOCK_MT);
}

/* The open core socket, or NULL. */
static mlr_sock *open_sock(lsock *ls)
{
    return mlr_sock_is_open(ls->s) ? ls->s : NULL;
}

/* The one idempotent destructor: close the connection, free the core
 * socket (and its TLS settings), forget buffered bytes. */
static void sock_release(lsock *ls)
{
    if (ls->s) {
        mlr_sock_free(ls->s);
        ls->s = NULL;
    }
    ls->rpos = ls->rlen = 0;
}

/* The core socket, made anew after a close; raises when out of memory. */
static mlr_sock *ensure_sock(lua_State *L, lsock *ls)
{
    if (!ls->s) {
        ls->s = mlr_sock_new(&ls->alloc);
        if (!ls->s)
            luaL_error(L, "not enough memory");
        mlr_sock_set_timeouts(ls->s, ls->tmo[0], ls->tmo[1], ls->tmo[2]);
    }
    return ls->s;
}

/* Push nil, "closed", "network"; 3. */
static int push_closed(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    lua_pushliteral(L, "network");
    return 3;
}

/* Push nil, the cosocket error string for rc, the kind; 3. */
static int push_fail(lua_State *L, int rc, const char *msg)
{
    lua_pushnil(L);
    if (rc == MLR_ERR_TIMEOUT)
        lua_pushliteral(L, "timeout");
    else
        lua_pushstring(L, msg);
    lua_pushstring(L, mlr_err_kind(rc));
    return 3;
}

/* A timeout argument in ms: -1 for nil/none; raises for non-numbers and
 * negative values; clamps huge ones (math.huge included). */
static int opt_timeout(lua_State *L, int idx)
{
    lua_Number v;
    if (lua_isnoneornil(L, idx))
        return -1;
    v = luaL_checknumber(L, idx);
    if (!(v >= 0)) /* also NaN */
        luaL_argerror(L, idx, "bad timeout value");
    return v > MAX_TIMEOUT_MS ? MAX_TIMEOUT_MS : (int)v;
}

/* A string argument without embedded NULs (optional when opt). */
static const char *check_name(lua_State *L, int idx, int opt)
{
    size_t len;
    const char *s;
    if (opt && lua_isnoneornil(L, idx))
        return NULL;
    s = luaL_checklstring(L, idx, &len);
    if (strlen(s) != len)
        luaL_argerror(L, idx, "contains a NUL byte");
    return s;
}

/* core.socket() -> a new, unconnected mailer.Socket. */
static int l_socket(lua_State *L)
{
    lsock *ls = lua_newuserdatauv(L, sizeof *ls, 0);
    memset(ls, 0, sizeof *ls);
    ls->tmo[0] = ls->tmo[1] = ls->tmo[2] = DEFAULT_TIMEOUT;
    luaL_getmetatable(L, SOCK_MT);
    lua_setmetatable(L, -2);
    mlr_lua_alloc(L, &ls->alloc);
    ensure_sock(L, ls);
    return 1;
}

/* sock:settimeouts(connect_ms, send_ms, read_ms) -> 1; nil leaves one as it is. */
static int l_settimeouts(lua_State *L)
{
    lsock *ls = check_sock(L);
    int i;
    for (i = 0; i < 3; i++) {
        int ms = opt_timeout(L, i + 2);
        if (ms >= 0)
            ls->tmo[i] = ms;
    }
    if (ls->s)
        mlr_sock_set_timeouts(ls->s, ls->tmo[0], ls->tmo[1], ls->tmo[2]);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:settimeout(ms) -> 1: all three timeouts. */
static int l_settimeout(lua_State *L)
{
    lsock *ls = check_sock(L);
    int ms;
    luaL_checknumber(L, 2);
    ms = opt_timeout(L, 2);
    ls->tmo[0] = ls->tmo[1] = ls->tmo[2] = ms;
    if (ls->s)
        mlr_sock_set_timeouts(ls->s, ms, ms, ms);
    lua_pushinteger(L, 1);
    return 1;
}

/* The port argument at idx: an integer 1..65535 (raises otherwise). */
static unsigned check_port(lua_State *L, int idx)
{
    lua_Number port = luaL_checknumber(L, idx);
    if (!(port >= 1 && port <= 65535) || port != (lua_Number)(unsigned)port)
        luaL_argerror(L, idx, "port out of range");
    return (unsigned)port;
}

/* sock:connect(host, port [, opts]) -> 1 | nil, msg, kind. opts (a cosocket
 * pool option table) is accepted and ignored; an open connection is
 * closed first. */
static int l_connect(lua_State *L)
{
    lsock *ls = check_sock(L);
    const char *host = check_name(L, 2, 0);
    unsigned port = check_port(L, 3);
    char err[400];
    int rc;
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    ls->rpos = ls->rlen = 0;
    rc = mlr_sock_connect(ensure_sock(L, ls), host, port, -1, err, sizeof err);
    if (rc)
        return push_fail(L, rc, err);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:settls{cafile=, capath=, certfile=, keyfile=} -> true | nil, msg, kind.
 * The files are loaded at once; other fields are ignored. close() forgets
 * them. */
static int l_settls(lua_State *L)
{
    static const char *const keys[] = {"cafile", "capath", "certfile", "keyfile"};
    lsock *ls = check_sock(L);
    const char *v[4];
    mlr_tls_opts o;
    char err[400];
    int i, rc;
    luaL_checktype(L, 2, LUA_TTABLE);
    for (i = 0; i < 4; i++) { /* the values stay on the stack while used */
        lua_getfield(L, 2, keys[i]);
        if (lua_isnil(L, -1)) {
            v[i] = NULL;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            v[i] = lua_tostring(L, -1);
        } else {
            return luaL_argerror(
                L, 2,
                lua_pushfstring(L, "%s must be a string, got %s", keys[i], luaL_typename(L, -1)));
        }
    }
    memset(&o, 0, sizeof o);
    o.cafile = v[0];
    o.capath = v[1];
    o.certfile = v[2];
    o.keyfile = v[3];
    rc = mlr_sock_set_tls(ensure_sock(L, ls), &o, err, sizeof err);
    if (rc)
        return push_fail(L, rc, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* sock:sslhandshake(reused_session, servername, verify) -> true | nil, msg, kind.
 * reused_session is ignored; servername nil: the host given to connect;
 * verify nil means false (as in ngx_lua). A failed handshake closes. */
static int l_sslhandshake(lua_State *L)
{
    lsock *ls = check_sock(L);
    const char *name = check_name(L, 3, 1);
    int verify = 0, rc;
    char err[400];
    mlr_sock *s;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TBOOLEAN);
        verify = lua_toboolean(L, 4);
    }
    if (!(s = open_sock(ls)))
        return push_closed(L);
    if (ls->rpos < ls->rlen) { /* bytes after the STARTTLS reply: injected plaintext */
        lua_pushnil(L);
        lua_pushfstring(L, "TLS handshake refused: %d bytes of plaintext arrived before it",
                        (int)(ls->rlen - ls->rpos));
        lua_pushliteral(L, "tls");
        mlr_sock_close(s);
        ls->rpos = ls->rlen = 0;
        return 3;
    }
    rc = mlr_sock_handshake(s, name, verify, -1, err, sizeof err);
    if (rc)
        return push_fail(L, rc, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* sock:send(data) -> #data | nil, msg, kind. data: a string, or a flat
 * table of strings (and numbers) written in order without joining them.
 * Sends everything or fails; a failure closes the socket. */
static int l_send(lua_State *L)
{
    lsock *ls = check_sock(L);
    size_t total = 0, n = 0, i, len;
    char err[400];
    int t = lua_type(L, 2), rc;
    mlr_sock *s;
    int64_t deadline;
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        const char *p = lua_tolstring(L, 2, &len);
        if (!(s = open_sock(ls)))
            return push_closed(L);
        rc = mlr_sock_write(s, p, len, -1, err, sizeof err);
        if (rc)
            return push_fail(L, rc, err);
        lua_pushinteger(L, (lua_Integer)len);
        return 1;
    }
    if (t != LUA_TTABLE)
        return luaL_argerror(
            L, 2, lua_pushfstring(L, "string or table expected, got %s", luaL_typename(L, 2)));
    n = lua_rawlen(L, 2);
    for (i = 1; i <= n; i++) { /* check everything before writing anything */
        lua_rawgeti(L, 2, (int)i);
        t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_argerror(L, 2,
                                 lua_pushfstring(L, "bad data type %s found at index %d",
                                                 luaL_typename(L, -1), (int)i));
        lua_tolstring(L, -1, &len);
        total += len;
        lua_pop(L, 1);
    }
    if (!(s = open_sock(ls)))
        return push_closed(L);
    luaL_checkstack(L, SEND_BATCH + 2, "send");
    deadline = mlr_clock_ms() + mlr_sock_send_timeout(s);
    for (i = 1; i <= n;) { /* pieces stay on the stack (anchored) while written */
        mlr_iov v[SEND_BATCH];
        size_t k = 0;
        int base = lua_gettop(L);
        int64_t left;
        for (; i <= n && k < SEND_BATCH; i++, k++) {
            lua_rawgeti(L, 2, (int)i);
            v[k].p = lua_tolstring(L, -1, &v[k].n);
        }
        left = deadline - mlr_clock_ms();
        rc = mlr_sock_writev(s, v, k, left > 0 ? (int)left : 0, err, sizeof err);
        lua_settop(L, base);
        if (rc)
            return push_fail(L, rc, err);
    }
    lua_pushinteger(L, (lua_Integer)total);
    return 1;
}

/* Fill the read buffer (it is empty) within the call's deadline: the
 * count, 0 at EOF (the socket is then closed), or a negative error. */
static long fill(lsock *ls, int64_t deadline, char *err, size_t errlen)
{
    int64_t left = deadline - mlr_clock_ms();
    long r;
    ls->rpos = ls->rlen = 0;
    if (!open_sock(ls))
        return 0;
    r = mlr_sock_read(ls->s, ls->rbuf, sizeof ls->rbuf, left > 0 ? (int)left : 0, err, errlen);
    if (r > 0)
        ls->rlen = (size_t)r;
    else if (r == 0)
        sock_release(ls); /* the peer closed: so do we, as cosockets do */
    return r;
}

/* sock:receiveany(max) -> data | nil, msg, kind: what has arrived (at
 * most max bytes, and at most one buffer), waiting for something up to
 * the read timeout. */
static int l_receiveany(lua_State *L)
{
    lsock *ls = check_sock(L);
    lua_Number max = luaL_checknumber(L, 2);
    size_t want;
    char err[400];
    long r;
    if (!(max >= 1))
        return luaL_argerror(L, 2, "bad max argument");
    want = max > RBUF_SIZE ? RBUF_SIZE : (size_t)max;
    if (ls->rpos == ls->rlen) {
        if (!open_sock(ls))
            return push_closed(L);
        r = fill(ls, mlr_clock_ms() + mlr_sock_read_timeout(ls->s), err, sizeof err);
        if (r == 0)
            return push_closed(L);
        if (r < 0)
            return push_fail(L, (int)r, err);
    }
    if (want > ls->rlen - ls->rpos)
        want = ls->rlen - ls->rpos;
    lua_pushlstring(L, ls->rbuf + ls->rpos, want);
    ls->rpos += want;
    return 1;
}

/* Push nil, msg, the partial data (the buffer b), kind; 4. */
static int receive_fail(lua_State *L, luaL_Buffer *b, long r, const char *err)
{
    luaL_pushresult(b);
    lua_pushnil(L);
    if (r == 0)
        lua_pushliteral(L, "closed");
    else if (r == MLR_ERR_TIMEOUT)
        lua_pushliteral(L, "timeout");
    else
        lua_pushstring(L, err);
    lua_pushvalue(L, -3);
    lua_pushstring(L, r == 0 ? "network" : mlr_err_kind((int)r));
    return 4;
}

/* sock:receive([pattern]) -> data | nil, msg, partial, kind. pattern: a
 * byte count, "*l" / "l" (a line; LF ends it, CRs are dropped; the
 * default) or "*a" / "a" (everything until the peer closes). The whole
 * call gets the read timeout. */
static int l_receive(lua_State *L)
{
    lsock *ls = check_sock(L);
    int mode = 'l';
    size_t need = 0;
    luaL_Buffer b;
    char err[400];
    int64_t deadline;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 2);
        if (!(n >= 0 && n < 9e15))
            return luaL_argerror(L, 2, "bad pattern argument");
        need = (size_t)n;
        mode = 'n';
    } else if (!lua_isnoneornil(L, 2)) {
        const char *p = luaL_checkstring(L, 2);
        if (!strcmp(p, "*l") || !strcmp(p, "l"))
            mode = 'l';
        else if (!strcmp(p, "*a") || !strcmp(p, "a"))
            mode = 'a';
        else
            return luaL_argerror(L, 2, "bad pattern argument");
    }
    if (ls->rpos == ls->rlen && !open_sock(ls)) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "");
        lua_pushliteral(L, "network");
        return 4;
    }
    deadline = mlr_clock_ms() + (ls->s ? mlr_sock_read_timeout(ls->s) : 0);
    luaL_buffinit(L, &b);
    for (;;) {
        long r;
        if (mode == 'n') {
            size_t k = ls->rlen - ls->rpos;
            if (k > need)
                k = need;
            luaL_addlstring(&b, ls->rbuf + ls->rpos, k);
            ls->rpos += k;
            need -= k;
            if (need == 0)
                break;
        } else if (mode == 'l') {
            int done = 0;
            while (ls->rpos < ls->rlen) {
                char c = ls->rbuf[ls->rpos++];
                if (c == '\n') {
                    done = 1;
                    break;
                }
                if (c != '\r')
                    luaL_addchar(&b, c);
            }
            if (done)
                break;
        } else {
            luaL_addlstring(&b, ls->rbuf + ls->rpos, ls->rlen - ls->rpos);
            ls->rpos = ls->rlen;
        }
        r = fill(ls, deadline, err, sizeof err);
        if (r == 0 && mode == 'a')
            break; /* "*a" ends at EOF */
        if (r <= 0)
            return receive_fail(L, &b, r, err);
    }
    luaL_pushresult(&b);
    return 1;
}

/* ---- steps that never wait (for event-loop adapters) ----
 * Each does what it can at once; "wantread" / "wantwrite" say what to
 * wait for (poll sock:getfd()) before calling again. */

/* Push nil, "wantread" or "wantwrite"; 2. */
static int push_want(lua_State *L, int want)
{
    lua_pushnil(L);
    if (want == MLR_SOCK_WANT_READ)
        lua_pushliteral(L, "wantread");
    else
        lua_pushliteral(L, "wantwrite");
    return 2;
}

/* sock:tryconnect(host, port) -> 1 | nil, "wantwrite" | nil, msg, kind.
 * The first call starts (resolving host may block); later calls finish
 * the same connection (host and port are then not used again). */
static int l_tryconnect(lua_State *L)
{
    lsock *ls = check_sock(L);
    const char *host = check_name(L, 2, 0);
    unsigned port = check_port(L, 3);
    char err[400];
    int rc;
    ls->rpos = ls->rlen = 0;
    rc = mlr_sock_connect_step(ensure_sock(L, ls), host, port, err, sizeof err);
    if (rc > 0)
        return push_want(L, rc);
    if (rc)
        return push_fail(L, rc, err);
    lua_pushinteger(L, 1);
    return 1;
}

/* sock:tryhandshake(servername, verify) -> true | nil, "wantread" |
 * "wantwrite" | nil, msg, kind. As sslhandshake, one step at a time. */
static int l_tryhandshake(lua_State *L)
{
    lsock *ls = check_sock(L);
    const char *name = check_name(L, 2, 1);
    char err[400];
    int rc, verify = 0;
    mlr_sock *s;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TBOOLEAN);
        verify = lua_toboolean(L, 3);
    }
    if (!(s = open_sock(ls)))
        return push_closed(L);
    if (ls->rpos < ls->rlen) { /* bytes after the STARTTLS reply: injected plaintext */
        lua_pushnil(L);
        lua_pushfstring(L, "TLS handshake refused: %d bytes of plaintext arrived before it",
                        (int)(ls->rlen - ls->rpos));
        lua_pushliteral(L, "tls");
        mlr_sock_close(s);
        ls->rpos = ls->rlen = 0;
        return 3;
    }
    rc = mlr_sock_handshake_step(s, name, verify, err, sizeof err);
    if (rc > 0)
        return push_want(L, rc);
    if (rc)
        return push_fail(L, rc, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* sock:trysend(data [, i]) -> j [, want] | nil, msg, kind: writes what the
 * socket takes now of data from byte i (default 1); j is the index of the
 * last byte written (i - 1 when none), and want ("wantwrite" or
 * "wantread") is there when j < #data. An error closes the socket. */
static int l_trysend(lua_State *L)
{
    lsock *ls = check_sock(L);
    size_t len, done = 0;
    const char *p = luaL_checklstring(L, 2, &len);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    char err[400];
    mlr_sock *s;
    if (i < 1 || (size_t)(i - 1) > len)
        return luaL_argerror(L, 3, "index out of range");
    if (!(s = open_sock(ls)))
        return push_closed(L);
    while ((size_t)(i - 1) + done < len) {
        int want;
        long r = mlr_sock_write_some(s, p + (i - 1) + done, len - (size_t)(i - 1) - done, &want,
                                     err, sizeof err);
        if (r < 0)
            return push_fail(L, (int)r, err);
        if (r == 0) {
            lua_pushinteger(L, i - 1 + (lua_Integer)done);
            lua_pushstring(L, want == MLR_SOCK_WANT_READ ? "wantread" : "wantwrite");
            return 2;
        }
        done += (size_t)r;
    }
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

/* sock:tryreceive(max) -> data | nil, "wantread" | "wantwrite" | nil,
 * "closed", "network" | nil, msg, kind: what has arrived, at most max
 * bytes (and one buffer). */
static int l_tryreceive(lua_State *L)
{
    lsock *ls = check_sock(L);
    lua_Number max = luaL_checknumber(L, 2);
    size_t want;
    char err[400];
    if (!(max >= 1))
        return luaL_argerror(L, 2, "bad max argument");
    want = max > RBUF_SIZE ? RBUF_SIZE : (size_t)max;
    if (ls->rpos == ls->rlen) {
        int w;
        long r;
        ls->rpos = ls->rlen = 0;
        if (!open_sock(ls))
            return push_closed(L);
        r = mlr_sock_read_some(ls->s, ls->rbuf, sizeof ls->rbuf, &w, err, sizeof err);
        if (r < 0)
            return push_fail(L, (int)r, err);
        if (r == 0 && w)
            return push_want(L, w);
        if (r == 0) {
            sock_release(ls); /* the peer closed: so do we, as cosockets do */
            return push_closed(L);
        }
        ls->rlen = (size_t)r;
    }
    if (want > ls->rlen - ls->rpos)
        want = ls->rlen - ls->rpos;
    lua_pushlstring(L, ls->rbuf + ls->rpos, want);
    ls->rpos += want;
    return 1;
}

/* sock:close() -> 1 (idempotent). Timeouts stay; settls is forgotten. */
static int l_close(lua_State *L)
{
    sock_release(check_sock(L));
    lua_pushinteger(L, 1);
    return 1;
}

/* __gc and __close: the same destructor as close(). */
static int sock_gc(lua_State *L)
{
    sock_release(check_sock(L));
    return 0;
}

/* sock:getfd() -> the descriptor, or -1 when not connected. */
static int l_getfd(lua_State *L)
{
    lsock *ls = check_sock(L);
    lua_pushinteger(L, open_sock(ls) ? mlr_sock_fd(ls->s) : -1);
    return 1;
}

/* sock:setkeepalive() -> nil, msg, "unsupported": there is no pool here. */
static int l_setkeepalive(lua_State *L)
{
    check_sock(L);
    lua_pushnil(L);
    lua_pushliteral(L, "setkeepalive is only available on nginx cosockets");
    lua_pushliteral(L, "unsupported");
    return 3;
}

/* __tostring: "mailer.Socket (open|closed): 0x...". */
static int sock_tostring(lua_State *L)
{
    lsock *ls = check_sock(L);
    lua_pushfstring(L, "mailer.Socket (%s): %p", open_sock(ls) ? "open" : "closed", (void *)ls);
    return 1;
}

struct mlr_sock *mlr_lua_tosocket(lua_State *L, int idx)
{
    lsock *ls = luaL_testudata(L, idx, SOCK_MT);
    return ls ? open_sock(ls) : NULL;
}

long mlr_lua_socket_recv(lua_State *L, int idx, const char **p, char *err, size_t errlen)
{
    lsock *ls = luaL_testudata(L, idx, SOCK_MT);
    long r;
    if (!ls)
        return MLR_ERR_STATE;
    if (ls->rpos == ls->rlen) {   /* as receiveany: what is buffered first */
        if (!open_sock(ls))
            return 0;
        r = fill(ls, mlr_clock_ms() + mlr_sock_read_timeout(ls->s), err, errlen);
        if (r <= 0)
            return r;
    }
    *p = ls->rbuf + ls->rpos;
    r = (long)(ls->rlen - ls->rpos);
    ls->rpos = ls->rlen;
    return r;
}

static const luaL_Reg sock_methods[] = {
    {"settimeouts", l_settimeouts},
    {"settimeout", l_settimeout},
    {"connect", l_connect},
    {"settls", l_settls},
    {"sslhandshake", l_sslhandshake},
    {"send", l_send},
    {"receive", l_receive},
    {"receiveany", l_receiveany},
    {"close", l_close},
    {"getfd", l_getfd},
    {"setkeepalive", l_setkeepalive},
    {"tryconnect", l_tryconnect},
    {"tryhandshake", l_tryhandshake},
    {"trysend", l_trysend},
    {"tryreceive", l_tryreceive},
    {NULL, NULL},
};

/* ---- mailer.Waiter: a descriptor for loops without timers (waiter.h) ---- */

/* The waiter userdata at index 1 (raises when it is not one). */
static mlr_waiter *check_waiter(lua_State *L)
{
    return luaL_checkudata(L, 1, WAITER_MT);
}

/* core.waiter() -> a mailer.Waiter | nil, msg, kind ("unsupported" where
 * there is no epoll and timerfd). */
static int l_waiter(lua_State *L)
{
    mlr_waiter *w = lua_newuserdatauv(L, sizeof *w, 0);
    char err[200];
    int rc;
    w->ep = w->tfd = w->fd = -1;
    w->events = 0;
    luaL_getmetatable(L, WAITER_MT);
    lua_setmetatable(L, -2);
    rc = mlr_waiter_open(w, err, sizeof err);
    if (rc)
        return push_fail(L, rc, err);
    return 1;
}

/* w:arm(fd | nil, "r" | "w" | nil, seconds | nil) -> true | nil, msg, kind:
 * readable once fd is ready for that, or seconds from now (nil: never). */
static int l_waiter_arm(lua_State *L)
{
    mlr_waiter *w = check_waiter(L);
    int fd = (int)luaL_optinteger(L, 2, -1);
    const char *ev = luaL_optstring(L, 3, "r");
    int64_t deadline = -1;
    char err[200];
    int rc;
    if (!lua_isnoneornil(L, 4)) {
        lua_Number sec = luaL_checknumber(L, 4);
        if (sec != sec)
            return luaL_argerror(L, 4, "bad timeout value");
        if (sec < 0)
            sec = 0;
        if (sec > 2073600.0)   /* 24 days */
            sec = 2073600.0;
        deadline = mlr_clock_ms() + (int64_t)(sec * 1000.0 + 0.5);
    }
    rc = mlr_waiter_arm(w, fd, ev[0] == 'w' ? MLR_WAIT_WRITE : MLR_WAIT_READ, deadline, err,
                        sizeof err);
    if (rc)
        return push_fail(L, rc, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* w:getfd() -> the descriptor (readable when fired), -1 when closed. */
static int l_waiter_getfd(lua_State *L)
{
    lua_pushinteger(L, mlr_waiter_fd(check_waiter(L)));
    return 1;
}

/* w:close(), __gc, __close: close the descriptors (idempotent). */
static int l_waiter_close(lua_State *L)
{
    mlr_waiter_close(check_waiter(L));
    return 0;
}

/* core.sleep(seconds): block the whole process that long (for the
 * pool's rate limit where no event loop runs). */
static int l_sleep(lua_State *L)
{
    lua_Number sec = luaL_checknumber(L, 1);
    struct timespec ts;
    if (!(sec > 0))
        return 0;
    if (sec > 2073600.0)
        sec = 2073600.0;
    ts.tv_sec = (time_t)sec;
    ts.tv_nsec = (long)((sec - (lua_Number)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    return 0;
}

static const luaL_Reg waiter_methods[] = {
    {"arm", l_waiter_arm},
    {"getfd", l_waiter_getfd},
    {"close", l_waiter_close},
    {NULL, NULL},
};

void mlr_open_socket(lua_State *L)
{
    luaL_newmetatable(L, SOCK_MT);
    lua_pushcfunction(L, sock_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, sock_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, sock_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, sock_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_socket);
    lua_setfield(L, -2, "socket");
    luaL_newmetatable(L, WAITER_MT);
    lua_pushcfunction(L, l_waiter_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_waiter_close);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, waiter_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_waiter);
    lua_setfield(L, -2, "waiter");
    lua_pushcfunction(L, l_sleep);
    lua_setfield(L, -2, "sleep");
}
