/* lmailer_smtp.c - Lua binding of SMTP connections (mailer.Connection):
 * the C transport driving the SMTP engine, receipts and error objects,
 * trace and progress callbacks. lua/mailer/smtp.lua adds the public
 * methods (send, send_many, ...) on top of the raw ones here.
 *
 * Memory rule: nothing malloc'd is held across a call that can raise.
 * The engine and socket live in the connection userdata; a send's
 * transactions and renderers live in a "mailer.SendState" userdata whose
 * __gc frees them, so an error anywhere leaves nothing behind. Callbacks
 * run under lua_pcall; their errors close the connection and are raised
 * again once everything is released. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lmailer.h"
#include "mime_message.h"
#include "smtp_engine.h"
#include "transport.h"

#define CONN_MT "mailer.Connection"
#define SEND_MT "mailer.SendState"
#define NSLOT 2   /* messages in flight in send_many: one sending, one queued */

typedef struct lconn {
    mlr_smtp *e;
    mlr_conn *c;
    mlr_alloc alloc;
    lua_State *L;       /* the state running the current method (for callbacks) */
    int closed;         /* close() was called: further use raises */
    int has_trace;
    int cb_failed;      /* a Lua callback raised; its error is in uservalue.cb_err */
    int driving;        /* inside mlr_conn_drive: Lua callbacks may be running */
    double timeout;
} lconn;

typedef struct slot {
    int used;
    int queued;             /* handed to the engine */
    int index;              /* position in send_many's results */
    mlr_smtp_txn txn;
    mlr_render *r;
    const char **rcpt;
    size_t *rcpt_len;
    size_t nrcpt;
    uint64_t total;
    uint64_t reported;      /* progress already reported */
} slot;

typedef struct lsend {
    lconn *lc;
    mlr_alloc alloc;
    slot s[NSLOT];
} lsend;

/* ---- helpers ---- */

static lconn *check_conn(lua_State *L, int idx)
{
    lconn *lc = luaL_checkudata(L, idx, CONN_MT);
    if (lc->closed)
        luaL_error(L, "attempt to use a closed connection");
    lc->L = L;
    return lc;
}

/* Push field k of the uservalue table of the userdata at idx. */
static void uv_get(lua_State *L, int idx, const char *k)
{
    mlr_getuv(L, idx);
    lua_getfield(L, -1, k);
    lua_remove(L, -2);
}

/* Set field k of the uservalue table of the userdata at idx to the top value (popped). */
static void uv_set(lua_State *L, int idx, const char *k)
{
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    mlr_getuv(L, idx);
    lua_insert(L, -2);
    lua_setfield(L, -2, k);
    lua_pop(L, 1);
}

/* Push an error object from a core status. */
static void push_status_error(lua_State *L, const mlr_smtp_status *st)
{
    int err = st->err ? st->err : MLR_ERR_PROTOCOL;
    const char *kind = err == MLR_ERR_NOMEM ? "protocol" : mlr_err_kind(err);
    mlr_push_error(L, kind, st->message, NULL, st->code ? st->code : -1, st->enhanced,
                   st->temporary);
}

/* The connection's registry-free identity for callbacks: the userdata sits
 * at stack index 1 of every method call. */
#define SELF 1

/* Trace hook: calls uservalue.trace(direction, line) under pcall. */
static void trace_cb(void *ud, char dir, const char *line, size_t len)
{
    lconn *lc = ud;
    lua_State *L = lc->L;
    char d[2] = {dir, 0};
    if (!L || lc->cb_failed || !lc->has_trace || !lua_checkstack(L, 6))
        return;
    uv_get(L, SELF, "trace");
    lua_pushstring(L, d);
    lua_pushlstring(L, line, len);
    if (lua_pcall(L, 2, 0, 0) != 0) {
        lc->cb_failed = 1;
        uv_set(L, SELF, "cb_err");
    }
}

/* Fail the engine because a callback raised, and close the socket. */
static void callback_abort(lconn *lc)
{
    mlr_smtp_fail(lc->e, MLR_ERR_INPUT, 0, "a callback raised an error; connection closed");
    mlr_conn_close(lc->c);
}

/* Raise the stored callback error. */
static int raise_cb_error(lua_State *L)
{
    uv_get(L, SELF, "cb_err");
    return lua_error(L);
}

/* ---- connect ---- */

static const char *opt_str(lua_State *L, int t, const char *k, size_t *len)
{
    const char *s;
    lua_getfield(L, t, k);
    s = lua_isstring(L, -1) ? lua_tolstring(L, -1, len) : NULL;
    lua_pop(L, 1);   /* the string stays alive in the options table */
    return s;
}

static int opt_bool(lua_State *L, int t, const char *k, int dflt)
{
    int v;
    lua_getfield(L, t, k);
    v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static double opt_num(lua_State *L, int t, const char *k, double dflt)
{
    double v;
    lua_getfield(L, t, k);
    v = lua_isnumber(L, -1) ? (double)lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

static int conn_gc(lua_State *L);

/* Build the capabilities table from the EHLO text (linear). */
static void push_caps(lua_State *L, lconn *lc)
{
    size_t len, i = 0, start, k;
    const char *t = mlr_smtp_ehlo_text(lc->e, &len);
    int nauth = 0;
    lua_newtable(L);
    while (i < len && t[i] != '\n')
        i++;   /* skip the greeting line */
    while (i < len) {
        const char *l, *arg;
        size_t n, alen;
        char key[64];
        start = ++i;
        while (i < len && t[i] != '\n')
            i++;
        l = t + start;
        n = i - start;
        for (k = 0; k < n && l[k] != ' ' && l[k] != '='; k++)
            ;
        if (k == 0 || k >= sizeof key)
            continue;
        for (start = 0; start < k; start++) {
            char ch = l[start];
            key[start] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
        }
        key[k] = '\0';
        arg = l + k + (k < n);
        alen = k < n ? n - k - 1 : 0;
        if (!strcmp(key, "AUTH")) {
            size_t j = 0;
            lua_getfield(L, -1, "AUTH");
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_newtable(L);
                lua_pushvalue(L, -1);
                lua_setfield(L, -3, "AUTH");
            }
            while (j < alen) {
                size_t s0, m;
                int dup = 0, q;
                while (j < alen && arg[j] == ' ')
                    j++;
                s0 = j;
                while (j < alen && arg[j] != ' ')
                    j++;
                if (j == s0 || j - s0 > 40)
                    continue;
                {
                    char mech[48];
                    for (m = 0; m < j - s0; m++) {
                        char ch = arg[s0 + m];
                        mech[m] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
                    }
                    mech[m] = '\0';
                    for (q = 1; q <= nauth && q <= 64; q++) {   /* bounded dedupe */
                        lua_rawgeti(L, -1, q);
                        dup |= !strcmp(lua_tostring(L, -1), mech);
                        lua_pop(L, 1);
                    }
                    if (!dup && nauth < 64) {
                        lua_pushstring(L, mech);
                        lua_rawseti(L, -2, ++nauth);
                    }
                }
            }
            lua_pop(L, 1);
        } else if (!strcmp(key, "SIZE")) {
            const mlr_caps *c = mlr_smtp_caps(lc->e);
            if (c->size)
                lua_pushinteger(L, (lua_Integer)c->size);
            else
                lua_pushboolean(L, 1);
            lua_setfield(L, -2, "SIZE");
        } else {
            if (alen)
                lua_pushlstring(L, arg, alen);
            else
                lua_pushboolean(L, 1);
            lua_setfield(L, -2, key);
        }
    }
}

/* Store a fresh capabilities table in the uservalue. */
static void save_caps(lua_State *L, lconn *lc)
{
    push_caps(L, lc);
    lua_pushboolean(L, mlr_smtp_tls_active(lc->e));
    uv_set(L, SELF, "tls");
    uv_set(L, SELF, "capabilities");
}

/* Drive until idle; returns the engine's fatal error or MLR_OK. */
/* mlr_conn_drive, marking the connection as in use: a callback that tries
 * to close it meanwhile gets an error instead of freeing it under us. */
static int drive_raw(lconn *lc, mlr_drive_fn check, void *ud)
{
    int rc;
    lc->driving++;
    rc = mlr_conn_drive(lc->c, lc->e, check, ud);
    lc->driving--;
    return rc;
}

static int drive(lconn *lc, mlr_drive_fn check, void *ud)
{
    int rc = drive_raw(lc, check, ud);
    if (rc == -1 && lc->cb_failed)
        callback_abort(lc);
    return rc;
}

/* check for plain driving: stop when a callback failed. */
static int check_cb(void *ud)
{
    lconn *lc = ud;
    return lc->cb_failed ? -1 : 0;
}

/* Allocate a zeroed lconn userdata with metatable mt and a uservalue
 * holding opts.trace (opts at index 1). The userdata goes to index 1 (SELF,
 * for callbacks); opts stays on the stack above it, keeping its strings
 * alive until they are copied. Nothing is acquired yet. */
static lconn *push_lconn(lua_State *L, const char *mt)
{
    lconn *lc = lua_newuserdatauv(L, sizeof *lc, 1);
    memset(lc, 0, sizeof *lc);
    luaL_getmetatable(L, mt);
    lua_setmetatable(L, -2);
    lua_createtable(L, 0, 4);
    lua_getfield(L, 1, "trace");
    lc->has_trace = lua_isfunction(L, -1);
    lua_setfield(L, -2, "trace");
    mlr_setuv(L, -2);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_replace(L, SELF);
    lc->L = L;
    return lc;
}

/* core.smtp_connect(opts) -> conn | nil, err. opts were checked by
 * mailer.smtp: host, port, security, helo, username, password, token,
 * auth (list), allow_plaintext_auth, timeout, tls = {...}, trace. */
static int l_connect(lua_State *L)
{
    lconn *lc;
    mlr_smtp_opts eo;
    mlr_conn_opts co;
    mlr_smtp_status st;
    const char *sec, *s;
    char hostname[256];
    int err, rc;
    char errmsg[200];
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(&eo, 0, sizeof eo);
    memset(&co, 0, sizeof co);
    co.host = opt_str(L, 1, "host", NULL);
    if (!co.host)
        return luaL_argerror(L, 1, "host is required");
    co.port = (unsigned)opt_num(L, 1, "port", 587);
    sec = opt_str(L, 1, "security", NULL);
    if (!sec)
        sec = co.port == 465 ? "tls" : "starttls";
    if (!strcmp(sec, "tls"))
        eo.security = MLR_SEC_TLS;
    else if (!strcmp(sec, "starttls"))
        eo.security = MLR_SEC_STARTTLS;
    else if (!strcmp(sec, "starttls-optional"))
        eo.security = MLR_SEC_STARTTLS_OPTIONAL;
    else if (!strcmp(sec, "none"))
        eo.security = MLR_SEC_NONE;
    else
        return luaL_argerror(L, 1, "security must be \"tls\", \"starttls\", \"starttls-optional\" or \"none\"");
    co.implicit_tls = eo.security == MLR_SEC_TLS;
    co.no_tls = eo.security == MLR_SEC_NONE;
    co.timeout = opt_num(L, 1, "timeout", 30);
    co.tls.verify = 1;
    lua_getfield(L, 1, "tls");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        co.tls.verify = opt_bool(L, t, "verify", 1);
        co.tls.cafile = opt_str(L, t, "cafile", NULL);
        co.tls.capath = opt_str(L, t, "capath", NULL);
        co.tls.servername = opt_str(L, t, "servername", NULL);
        co.tls.certfile = opt_str(L, t, "certfile", NULL);
        co.tls.keyfile = opt_str(L, t, "keyfile", NULL);
    }
    lua_pop(L, 1);   /* the tls table stays alive in opts */
    eo.helo = opt_str(L, 1, "helo", NULL);
    if (!eo.helo) {
        if (gethostname(hostname, sizeof hostname) == 0 && hostname[0]) {
            hostname[sizeof hostname - 1] = '\0';
            eo.helo = hostname;
        }
    }
    eo.username = opt_str(L, 1, "username", &eo.username_len);
    eo.password = opt_str(L, 1, "password", &eo.password_len);
    eo.token = opt_str(L, 1, "token", &eo.token_len);
    eo.allow_plaintext_auth = opt_bool(L, 1, "allow_plaintext_auth", 0);
    eo.no_chunking = !opt_bool(L, 1, "chunking", 1);
    eo.host = co.tls.servername ? co.tls.servername : co.host;
    eo.port = co.port;
    lua_getfield(L, 1, "auth");
    if (lua_istable(L, -1)) {
        size_t i, n = lua_rawlen(L, -1);
        for (i = 1; i <= n && eo.auth_npref < 8; i++) {
            size_t l;
            lua_rawgeti(L, -1, (lua_Integer)i);
            s = lua_tolstring(L, -1, &l);
            if (s) {
                unsigned m = mlr_mech_from_name(s, l);
                if (!m)
                    return luaL_error(L, "unknown AUTH mechanism '%s'", s);
                eo.auth_pref[eo.auth_npref++] = m;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    /* allocate, then acquire */
    lc = push_lconn(L, CONN_MT);
    lc->timeout = co.timeout;
    mlr_lua_alloc(L, &lc->alloc);
    lc->c = mlr_conn_new(&lc->alloc);
    if (!lc->c)
        return luaL_error(L, "out of memory");
    eo.trace = trace_cb;
    eo.trace_ud = lc;
    lc->e = mlr_smtp_new(&lc->alloc, &eo, &err, errmsg, sizeof errmsg);
    if (!lc->e) {
        if (err == MLR_ERR_NOMEM)
            return luaL_error(L, "out of memory");
        return mlr_fail(L, "input", errmsg, NULL);
    }
    if ((rc = mlr_conn_open(lc->c, &co, &st)) != MLR_OK) {
        lua_pushnil(L);
        push_status_error(L, &st);
        return 2;
    }
    rc = drive(lc, check_cb, lc);
    if (lc->cb_failed) {
        conn_gc(L);
        return raise_cb_error(L);
    }
    if (rc < 0 || mlr_smtp_want(lc->e) < 0) {
        mlr_conn_close(lc->c);
        lua_pushnil(L);
        push_status_error(L, mlr_smtp_status_get(lc->e));
        return 2;
    }
    save_caps(L, lc);
    lua_settop(L, SELF);
    return 1;
}

/* ---- sending ---- */

/* Release a slot's memory (safe to call twice). */
static void slot_free(lsend *ls, slot *s)
{
    if (s->r) {
        mlr_render_free(s->r);
        s->r = NULL;
    }
    if (s->rcpt) {
        mlr_free(&ls->alloc, (void *)s->rcpt, s->nrcpt * sizeof *s->rcpt);
        s->rcpt = NULL;
    }
    if (s->rcpt_len) {
        mlr_free(&ls->alloc, s->rcpt_len, s->nrcpt * sizeof *s->rcpt_len);
        s->rcpt_len = NULL;
    }
    mlr_smtp_txn_free(&s->txn);
    s->used = 0;
}

/* __gc of a send state: free every slot; a transaction still in the engine
 * means the send was interrupted by an error: the connection cannot be
 * trusted any more. */
static int send_gc(lua_State *L)
{
    lsend *ls = luaL_checkudata(L, 1, SEND_MT);
    int i;
    for (i = 0; i < NSLOT; i++) {
        if (ls->s[i].used && ls->s[i].queued && !ls->s[i].txn.done && ls->lc && ls->lc->e) {
            mlr_smtp_fail(ls->lc->e, MLR_ERR_STATE, 0, "send interrupted by an error");
            if (ls->lc->c)
                mlr_conn_close(ls->lc->c);
        }
        if (ls->s[i].used)
            slot_free(ls, &ls->s[i]);
    }
    return 0;
}

/* New send state at the top of the stack; its uservalue keeps messages
 * and envelopes alive while their transactions run. */
static lsend *new_send(lua_State *L, lconn *lc)
{
    lsend *ls = lua_newuserdatauv(L, sizeof *ls, 1);
    memset(ls, 0, sizeof *ls);
    luaL_getmetatable(L, SEND_MT);
    lua_setmetatable(L, -2);
    lua_newtable(L);
    lua_pushvalue(L, SELF);
    lua_setfield(L, -2, "conn");
    mlr_setuv(L, -2);
    ls->lc = lc;
    ls->alloc = lc->alloc;
    return ls;
}

/* Body reader: the renderer. */
static int read_render(void *ud, const uint8_t **p, size_t *n)
{
    slot *s = ud;
    return mlr_render_next(s->r, p, n);
}

static const char *read_render_error(void *ud)
{
    slot *s = ud;
    return mlr_render_error(s->r);
}

/* Parse the dsn option at index o (a table or nil) into the transaction. */
static void parse_dsn(lua_State *L, int o, mlr_smtp_txn *t)
{
    lua_getfield(L, o, "dsn");
    if (lua_istable(L, -1)) {
        int d = lua_gettop(L);
        size_t i, n;
        t->dsn_ret = opt_str(L, d, "ret", NULL);
        t->dsn_envid = opt_str(L, d, "envid", &t->dsn_envid_len);
        lua_getfield(L, d, "notify");
        n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
        for (i = 1; i <= n; i++) {
            const char *v;
            lua_rawgeti(L, -1, (lua_Integer)i);
            v = lua_tostring(L, -1);
            if (v && !strcmp(v, "NEVER"))
                t->dsn_notify |= MLR_DSN_NEVER;
            else if (v && !strcmp(v, "SUCCESS"))
                t->dsn_notify |= MLR_DSN_SUCCESS;
            else if (v && !strcmp(v, "FAILURE"))
                t->dsn_notify |= MLR_DSN_FAILURE;
            else if (v && !strcmp(v, "DELAY"))
                t->dsn_notify |= MLR_DSN_DELAY;
            else
                t->dsn_notify |= 16;   /* invalid: the engine refuses it */
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);   /* strings stay alive in the options table, kept by the send state */
}

/* Set up slot s for the message at stack index mi with options at oi (or
 * 0); keeps both referenced from the send state at si. Returns 0, or
 * pushes an error object and returns 1 (input problems). */
static int slot_setup(lua_State *L, lsend *ls, slot *s, int si, int mi, int oi, int index)
{
    mlr_msg *m = mlr_lua_msg_use(L, mi);   /* raises on misuse: nothing held yet */
    const mlr_dkim *dk = NULL;
    size_t i, n;
    if (oi) {   /* a per-send signer (core.dkim_signer), alive in the options */
        mlr_dkim **ud;
        lua_getfield(L, oi, "dkim");
        ud = luaL_testudata(L, -1, "mailer.DkimSigner");
        if (ud)
            dk = *ud;
        lua_pop(L, 1);
    }
    memset(s, 0, sizeof *s);
    mlr_smtp_txn_init(&s->txn, &ls->alloc);
    s->index = index;
    /* keep message and options alive: uservalue[index] = {msg, opts} */
    mlr_getuv(L, si);
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, mi);
    lua_rawseti(L, -2, 1);
    if (oi) {
        lua_pushvalue(L, oi);
        lua_rawseti(L, -2, 2);
    }
    lua_rawseti(L, -2, index);
    lua_pop(L, 1);
    s->used = 1;

    s->txn.from = mlr_msg_env_from(m);
    n = mlr_msg_env_count(m);
    if (oi) {
        lua_getfield(L, oi, "envelope");
        if (lua_istable(L, -1)) {
            int ev = lua_gettop(L);
            const char *f = opt_str(L, ev, "from", NULL);
            if (f)
                s->txn.from = f;
            lua_getfield(L, ev, "to");
            if (lua_istable(L, -1))
                n = lua_rawlen(L, -1);
            else
                lua_pop(L, 1), lua_pushnil(L);
        } else {
            lua_pushnil(L);
        }
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    /* stack: ... envelope, envelope.to (or nils) */
    if (!s->txn.from)
        s->txn.from = "";
    s->txn.from_len = strlen(s->txn.from);
    if (n > SIZE_MAX / sizeof(size_t) / 2)
        luaL_error(L, "too many recipients");
    s->nrcpt = n;
    s->rcpt = mlr_malloc(&ls->alloc, (n ? n : 1) * sizeof *s->rcpt);
    s->rcpt_len = mlr_malloc(&ls->alloc, (n ? n : 1) * sizeof *s->rcpt_len);
    if (!s->rcpt || !s->rcpt_len)
        luaL_error(L, "out of memory");   /* the send state's __gc frees */
    for (i = 0; i < n; i++) {
        if (lua_istable(L, -1)) {
            lua_rawgeti(L, -1, (lua_Integer)(i + 1));
            s->rcpt[i] = lua_tolstring(L, -1, &s->rcpt_len[i]);
            lua_pop(L, 1);   /* alive in the envelope table */
            if (!s->rcpt[i]) {
                lua_pop(L, 2);
                mlr_push_error(L, "input", "envelope.to must hold strings", "envelope", -1, NULL, 0);
                return 1;
            }
        } else {
            s->rcpt[i] = mlr_msg_env_rcpt(m, i);
            s->rcpt_len[i] = strlen(s->rcpt[i]);
        }
    }
    lua_pop(L, 2);
    s->txn.rcpt = s->rcpt;
    s->txn.rcpt_len = s->rcpt_len;
    s->txn.nrcpt = n;
    s->total = mlr_msg_size_dkim(m, dk);
    s->txn.size = s->total;
    s->txn.utf8 = mlr_msg_needs_smtputf8(m);
    s->txn.eightbit = s->txn.utf8;
    if (oi)
        parse_dsn(L, oi, &s->txn);
    s->r = mlr_render_new_dkim(m, dk);
    if (!s->r)
        luaL_error(L, "out of memory");
    s->txn.read = read_render;
    s->txn.read_ud = s;
    s->txn.read_error = read_render_error;
    return 0;
}

/* Push the receipt of a finished transaction, or {error = err} / nil, err. */
static int push_outcome(lua_State *L, slot *s, int as_entry)
{
    mlr_smtp_txn *t = &s->txn;
    size_t i, na = 0, nr = 0;
    int rejected_idx;
    lua_createtable(L, 0, 0);   /* rejected list */
    rejected_idx = lua_gettop(L);
    lua_createtable(L, (int)t->naccepted, 0);   /* accepted list */
    for (i = 0; t->results && i < t->nrcpt; i++) {
        const mlr_rcpt_result *r = &t->results[i];
        if (r->code >= 200 && r->code < 300) {
            lua_pushlstring(L, s->rcpt[i], s->rcpt_len[i]);
            lua_rawseti(L, -2, (lua_Integer)++na);
        } else if (r->code) {
            lua_createtable(L, 0, 4);
            lua_pushlstring(L, s->rcpt[i], s->rcpt_len[i]);
            lua_setfield(L, -2, "address");
            lua_pushinteger(L, r->code);
            lua_setfield(L, -2, "code");
            if (r->enhanced[0]) {
                lua_pushstring(L, r->enhanced);
                lua_setfield(L, -2, "enhanced");
            }
            lua_pushlstring(L, t->text.data ? t->text.data + r->text_off : "", r->text_len);
            lua_setfield(L, -2, "message");
            lua_pushboolean(L, r->code / 100 == 4 || r->code == 552);
            lua_setfield(L, -2, "temporary");
            lua_rawseti(L, rejected_idx, (lua_Integer)++nr);
        }
    }
    if (t->status.err == MLR_OK) {
        lua_createtable(L, 0, 5);
        lua_insert(L, -2);
        lua_setfield(L, -2, "accepted");
        lua_pushvalue(L, rejected_idx);
        lua_setfield(L, -2, "rejected");
        lua_pushinteger(L, t->status.code);
        lua_setfield(L, -2, "code");
        lua_pushstring(L, t->status.message);
        lua_setfield(L, -2, "message");
        if (t->status.enhanced[0]) {
            lua_pushstring(L, t->status.enhanced);
            lua_setfield(L, -2, "enhanced");
        }
        lua_remove(L, rejected_idx);
        return 1;
    }
    lua_pop(L, 1);   /* accepted */
    push_status_error(L, &t->status);
    lua_insert(L, -2);
    lua_setfield(L, -2, "rejected");
    if (as_entry) {
        lua_createtable(L, 0, 1);
        lua_insert(L, -2);
        lua_setfield(L, -2, "error");
        return 1;
    }
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

/* Progress reporting and callback watch while driving a send. */
typedef struct send_drive {
    lconn *lc;
    lsend *ls;
    int stop_slot;     /* stop when this slot's transaction is done (-1: never) */
    int has_progress;
    int progress_idx;  /* stack index of the progress function */
} send_drive;

static int check_send(void *ud)
{
    send_drive *d = ud;
    lua_State *L = d->lc->L;
    int i;
    if (d->lc->cb_failed)
        return -1;
    if (d->has_progress) {
        for (i = 0; i < NSLOT; i++) {
            slot *s = &d->ls->s[i];
            if (!s->used || s->txn.body_sent == s->reported)
                continue;
            s->reported = s->txn.body_sent;
            lua_pushvalue(L, d->progress_idx);
            lua_pushinteger(L, (lua_Integer)s->txn.body_sent);
            if (s->total)
                lua_pushinteger(L, (lua_Integer)s->total);
            else
                lua_pushnil(L);
            if (lua_pcall(L, 2, 0, 0) != 0) {
                d->lc->cb_failed = 1;
                uv_set(L, SELF, "cb_err");
                return -1;
            }
        }
    }
    if (d->stop_slot >= 0 && d->ls->s[d->stop_slot].txn.done)
        return 1;
    return 0;
}

/* The engine failed: the connection is gone; report it for a later call. */
static int push_broken(lua_State *L, lconn *lc)
{
    const mlr_smtp_status *st = mlr_smtp_status_get(lc->e);
    mlr_smtp_status copy = *st;
    snprintf(copy.message, sizeof copy.message, "the connection is closed (after: %.440s)",
             st->message);
    copy.err = MLR_ERR_NETWORK;
    copy.code = 0;
    copy.enhanced[0] = '\0';
    copy.temporary = 1;
    lua_pushnil(L);
    push_status_error(L, &copy);
    return 2;
}

/* conn:_send(msg [, opts]) -> receipt | nil, err. msg is a mailer.Message. */
static int l_send(lua_State *L)
{
    lconn *lc = check_conn(L, 1);
    lsend *ls;
    send_drive d;
    int si, oi = lua_istable(L, 3) ? 3 : 0, rc;
    lua_settop(L, 3);
    if (mlr_smtp_status_get(lc->e)->err || !mlr_conn_is_open(lc->c))
        return push_broken(L, lc);
    ls = new_send(L, lc);
    si = lua_gettop(L);
    if (slot_setup(L, ls, &ls->s[0], si, 2, oi, 1)) {
        slot_free(ls, &ls->s[0]);
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    memset(&d, 0, sizeof d);
    d.lc = lc;
    d.ls = ls;
    d.stop_slot = 0;
    if (oi) {
        lua_getfield(L, oi, "progress");
        d.has_progress = lua_isfunction(L, -1);
        d.progress_idx = lua_gettop(L);
    }
    lc->L = L;
    if ((rc = mlr_smtp_send(lc->e, &ls->s[0].txn)) != MLR_OK) {
        slot_free(ls, &ls->s[0]);
        return push_broken(L, lc);
    }
    ls->s[0].queued = 1;
    rc = drive_raw(lc, check_send, &d);
    if (lc->cb_failed) {
        callback_abort(lc);
        slot_free(ls, &ls->s[0]);
        return raise_cb_error(L);
    }
    if (!ls->s[0].txn.done)   /* cannot happen: a fatal error fails it */
        mlr_smtp_fail(lc->e, MLR_ERR_STATE, 0, "send did not complete");
    rc = push_outcome(L, &ls->s[0], 0);
    slot_free(ls, &ls->s[0]);
    return rc;
}

/* conn:_send_many(next [, opts]) -> results. next() returns a message,
 * false plus an error object (recorded as {error = err}), or nil at the
 * end. Two messages are in flight so that the next one's commands go out
 * behind the previous final dot. */
static int l_send_many(lua_State *L)
{
    lconn *lc = check_conn(L, 1);
    lsend *ls;
    send_drive d;
    int si, ri, oi = lua_istable(L, 3) ? 3 : 0, count = 0, exhausted = 0, order[NSLOT], norder = 0;
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 3);
    lua_newtable(L);
    ri = lua_gettop(L);
    ls = new_send(L, lc);
    si = lua_gettop(L);
    memset(&d, 0, sizeof d);
    d.lc = lc;
    d.ls = ls;
    if (oi) {
        lua_getfield(L, oi, "progress");
        d.has_progress = lua_isfunction(L, -1);
        d.progress_idx = lua_gettop(L);
    }
    for (;;) {
        int i, free_slot = -1;
        /* fill the window */
        while (!exhausted && norder < NSLOT) {
            for (i = 0; i < NSLOT; i++)
                if (!ls->s[i].used) {
                    free_slot = i;
                    break;
                }
            lua_pushvalue(L, 2);
            lc->L = L;
            lua_call(L, 0, 2);   /* errors propagate; __gc of the send state cleans up */
            if (lua_isnil(L, -2)) {
                exhausted = 1;
                lua_pop(L, 2);
                break;
            }
            count++;
            if (!lua_toboolean(L, -2)) {   /* false, err: an item that failed to build */
                lua_createtable(L, 0, 1);
                lua_pushvalue(L, -2);
                lua_setfield(L, -2, "error");
                lua_rawseti(L, ri, count);
                lua_pop(L, 2);
                continue;
            }
            if (mlr_smtp_status_get(lc->e)->err || !mlr_conn_is_open(lc->c)) {
                lua_pop(L, 2);
                lua_createtable(L, 0, 1);
                push_broken(L, lc);
                lua_setfield(L, -3, "error");
                lua_pop(L, 1);
                lua_rawseti(L, ri, count);
                continue;
            }
            lua_pop(L, 1);
            if (slot_setup(L, ls, &ls->s[free_slot], si, lua_gettop(L), oi, count)) {
                lua_createtable(L, 0, 1);
                lua_insert(L, -2);
                lua_setfield(L, -2, "error");
                lua_rawseti(L, ri, count);
                lua_pop(L, 1);
                slot_free(ls, &ls->s[free_slot]);
                continue;
            }
            lua_pop(L, 1);
            if (mlr_smtp_send(lc->e, &ls->s[free_slot].txn) != MLR_OK) {
                mlr_smtp_fail(lc->e, MLR_ERR_STATE, 0, "cannot queue the message");
                ls->s[free_slot].txn.done = 1;
                ls->s[free_slot].txn.status = *mlr_smtp_status_get(lc->e);
            } else {
                ls->s[free_slot].queued = 1;
            }
            order[norder++] = free_slot;
        }
        if (norder == 0)
            break;
        /* drive until the oldest message in flight is done */
        d.stop_slot = order[0];
        if (!ls->s[order[0]].txn.done) {
            drive_raw(lc, check_send, &d);
            if (lc->cb_failed) {
                callback_abort(lc);
                for (i = 0; i < NSLOT; i++)
                    if (ls->s[i].used)
                        slot_free(ls, &ls->s[i]);
                return raise_cb_error(L);
            }
            if (!ls->s[order[0]].txn.done)
                mlr_smtp_fail(lc->e, MLR_ERR_STATE, 0, "send did not complete");
        }
        push_outcome(L, &ls->s[order[0]], 1);
        lua_rawseti(L, ri, ls->s[order[0]].index);
        slot_free(ls, &ls->s[order[0]]);
        mlr_getuv(L, si);   /* drop the references to the finished message */
        lua_pushnil(L);
        lua_rawseti(L, -2, ls->s[order[0]].index);
        lua_pop(L, 1);
        order[0] = order[1];
        norder--;
    }
    lua_pushvalue(L, ri);
    return 1;
}

/* Run a simple command (NOOP / RSET); true or nil, err. */
static int simple_cmd(lua_State *L, int (*start)(mlr_smtp *))
{
    lconn *lc = check_conn(L, 1);
    const mlr_smtp_status *st;
    int rc;
    lua_settop(L, 1);
    if (mlr_smtp_status_get(lc->e)->err || !mlr_conn_is_open(lc->c))
        return push_broken(L, lc);
    if ((rc = start(lc->e)) != MLR_OK) {
        if (rc == MLR_ERR_STATE)
            return luaL_error(L, "connection busy");
        return push_broken(L, lc);
    }
    drive(lc, check_cb, lc);
    if (lc->cb_failed)
        return raise_cb_error(L);
    if (mlr_smtp_status_get(lc->e)->err) {
        lua_pushnil(L);
        push_status_error(L, mlr_smtp_status_get(lc->e));
        return 2;
    }
    st = mlr_smtp_cmd_status(lc->e);
    if (st->err) {
        lua_pushnil(L);
        push_status_error(L, st);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:noop() -> true | nil, err */
static int l_noop(lua_State *L) { return simple_cmd(L, mlr_smtp_noop); }
/* conn:reset() -> true | nil, err (RSET) */
static int l_reset(lua_State *L) { return simple_cmd(L, mlr_smtp_rset); }

/* The one destructor: QUIT when polite and possible, then free. */
static void conn_destroy(lua_State *L, lconn *lc, int polite)
{
    if (lc->e && lc->c && polite && mlr_conn_is_open(lc->c) && mlr_smtp_quit(lc->e) == MLR_OK) {
        lc->has_trace = lc->has_trace && L != NULL;
        lc->L = L;
        drive_raw(lc, check_cb, lc);
    }
    if (lc->c) {
        mlr_conn_free(lc->c);
        lc->c = NULL;
    }
    if (lc->e) {
        mlr_smtp_free(lc->e);
        lc->e = NULL;
    }
    lc->closed = 1;
    lc->L = NULL;
}

/* __gc: free without network I/O. */
static int conn_gc(lua_State *L)
{
    lconn *lc = luaL_checkudata(L, 1, CONN_MT);
    if (lc->driving)
        return luaL_error(L, "cannot close a connection from inside one of its own callbacks");
    lc->has_trace = 0;
    conn_destroy(L, lc, 0);
    return 0;
}

/* conn:close() / __close: QUIT (best effort) and free; idempotent. A trace
 * callback error during QUIT is ignored: close never raises. */
static int l_close(lua_State *L)
{
    lconn *lc = luaL_checkudata(L, 1, CONN_MT);
    if (lc->driving)
        return luaL_error(L, "cannot close a connection from inside one of its own callbacks");
    if (!lc->closed) {
        lc->L = L;
        conn_destroy(L, lc, 1);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* __index: the capabilities / tls fields, then the methods table. */
static int conn_index(lua_State *L)
{
    const char *k = lua_tostring(L, 2);
    luaL_checkudata(L, 1, CONN_MT);
    if (k && (!strcmp(k, "capabilities") || !strcmp(k, "tls"))) {
        uv_get(L, 1, k);
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* tostring(conn): never shows credentials. */
static int conn_tostring(lua_State *L)
{
    lconn *lc = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "mailer.Connection (%s): %p", lc->closed ? "closed" : "open", (void *)lc);
    return 1;
}

/* ---- the engine alone, for drivers written in Lua (cosockets) ---- */

#define ENGINE_MT "mailer.Engine"

static lconn *check_engine(lua_State *L)
{
    lconn *lc = luaL_checkudata(L, 1, ENGINE_MT);
    if (!lc->e)
        luaL_error(L, "attempt to use a closed engine");
    lc->L = L;
    return lc;
}

/* Push nil, err for the engine's fatal error; 2. */
static int engine_fail(lua_State *L, lconn *lc)
{
    lua_pushnil(L);
    push_status_error(L, mlr_smtp_status_get(lc->e));
    return 2;
}

/* Return true, or nil, err when the engine has failed (or a callback raised). */
static int engine_ok(lua_State *L, lconn *lc)
{
    if (lc->cb_failed)
        return raise_cb_error(L);
    if (mlr_smtp_want(lc->e) < 0)
        return engine_fail(L, lc);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.smtp_engine(opts) -> engine. opts as for smtp_connect (host, port,
 * security, helo, credentials, auth, allow_plaintext_auth, trace); the
 * caller drives it: want / pending / consume / feed / eof / tls_done. */
static int l_engine(lua_State *L)
{
    lconn *lc;
    mlr_smtp_opts eo;
    const char *sec;
    int err;
    char errmsg[200], hostname[256];
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(&eo, 0, sizeof eo);
    sec = opt_str(L, 1, "security", NULL);
    eo.port = (unsigned)opt_num(L, 1, "port", 587);
    if (!sec)
        sec = eo.port == 465 ? "tls" : "starttls";
    eo.security = !strcmp(sec, "tls") ? MLR_SEC_TLS
                  : !strcmp(sec, "starttls-optional") ? MLR_SEC_STARTTLS_OPTIONAL
                  : !strcmp(sec, "none") ? MLR_SEC_NONE : MLR_SEC_STARTTLS;
    eo.helo = opt_str(L, 1, "helo", NULL);
    if (!eo.helo && gethostname(hostname, sizeof hostname) == 0 && hostname[0]) {
        hostname[sizeof hostname - 1] = '\0';
        eo.helo = hostname;   /* copied by mlr_smtp_new, as smtp_connect does */
    }
    eo.host = opt_str(L, 1, "host", NULL);
    eo.username = opt_str(L, 1, "username", &eo.username_len);
    eo.password = opt_str(L, 1, "password", &eo.password_len);
    eo.token = opt_str(L, 1, "token", &eo.token_len);
    eo.allow_plaintext_auth = opt_bool(L, 1, "allow_plaintext_auth", 0);
    eo.no_chunking = !opt_bool(L, 1, "chunking", 1);
    lua_getfield(L, 1, "auth");
    if (lua_istable(L, -1)) {
        size_t i, n = lua_rawlen(L, -1);
        for (i = 1; i <= n && eo.auth_npref < 8; i++) {
            size_t l;
            const char *m;
            lua_rawgeti(L, -1, (lua_Integer)i);
            m = lua_tolstring(L, -1, &l);
            if (m && mlr_mech_from_name(m, l))
                eo.auth_pref[eo.auth_npref++] = mlr_mech_from_name(m, l);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lc = push_lconn(L, ENGINE_MT);
    mlr_lua_alloc(L, &lc->alloc);
    eo.trace = trace_cb;
    eo.trace_ud = lc;
    lc->e = mlr_smtp_new(&lc->alloc, &eo, &err, errmsg, sizeof errmsg);
    if (!lc->e) {
        if (err == MLR_ERR_NOMEM)
            return luaL_error(L, "out of memory");
        return mlr_fail(L, "input", errmsg, NULL);
    }
    new_send(L, lc);
    uv_set(L, SELF, "send");
    lua_settop(L, SELF);
    return 1;
}

/* eng:want() -> read, write, tls, done (booleans) | nil, err */
static int e_want(lua_State *L)
{
    lconn *lc = check_engine(L);
    int w = mlr_smtp_want(lc->e);
    if (w < 0)
        return engine_fail(L, lc);
    lua_pushboolean(L, w & MLR_WANT_READ);
    lua_pushboolean(L, w & MLR_WANT_WRITE);
    lua_pushboolean(L, w & MLR_WANT_TLS);
    lua_pushboolean(L, w & MLR_WANT_DONE);
    return 4;
}

/* eng:pending() -> string (the bytes to write; "" when none) */
static int e_pending(lua_State *L)
{
    lconn *lc = check_engine(L);
    const uint8_t *p;
    size_t n = mlr_smtp_pending(lc->e, &p);
    lua_pushlstring(L, n ? (const char *)p : "", n);
    return 1;
}

/* eng:consume(n): n pending bytes were written */
static int e_consume(lua_State *L)
{
    lconn *lc = check_engine(L);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "negative count");
    mlr_smtp_consume(lc->e, (size_t)n);
    return 0;
}

/* eng:feed(bytes) -> true | nil, err */
static int e_feed(lua_State *L)
{
    lconn *lc = check_engine(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    mlr_smtp_feed(lc->e, (const uint8_t *)s, n);
    return engine_ok(L, lc);
}

/* eng:eof() -> true | nil, err (the server closed the connection) */
static int e_eof(lua_State *L)
{
    lconn *lc = check_engine(L);
    mlr_smtp_eof(lc->e);
    return engine_ok(L, lc);
}

/* eng:tls_done() -> true | nil, err */
static int e_tls_done(lua_State *L)
{
    lconn *lc = check_engine(L);
    int rc = mlr_smtp_tls_done(lc->e);
    if (rc == MLR_ERR_STATE)
        return luaL_error(L, "the engine did not ask for TLS");
    return engine_ok(L, lc);
}

/* eng:fail(kind, message [, temporary]): record a driver failure
 * (kind "network", "timeout", "tls"). */
static int e_fail(lua_State *L)
{
    static const char *const kinds[] = {"network", "timeout", "tls", NULL};
    static const int errs[] = {MLR_ERR_NETWORK, MLR_ERR_TIMEOUT, MLR_ERR_TLS};
    lconn *lc = check_engine(L);
    int k = luaL_checkoption(L, 2, NULL, kinds);
    const char *msg = luaL_checkstring(L, 3);
    mlr_smtp_fail(lc->e, errs[k], lua_isnoneornil(L, 4) ? k != 2 : lua_toboolean(L, 4), "%s", msg);
    return 0;
}

/* eng:status() -> ready (boolean), step name, step id, tls active */
static int e_status(lua_State *L)
{
    lconn *lc = check_engine(L);
    lua_pushboolean(L, mlr_smtp_ready(lc->e));
    lua_pushstring(L, mlr_smtp_step_name(lc->e));
    lua_pushinteger(L, (lua_Integer)mlr_smtp_step_id(lc->e));
    lua_pushboolean(L, mlr_smtp_tls_active(lc->e));
    return 4;
}

/* eng:capabilities() -> table */
static int e_caps(lua_State *L)
{
    lconn *lc = check_engine(L);
    push_caps(L, lc);
    return 1;
}

/* eng:queue(msg [, opts]) -> slot | nil, err: start sending a message
 * (at most 2 at a time); poll eng:result(slot). */
static int e_queue(lua_State *L)
{
    lconn *lc = check_engine(L);
    lsend *ls;
    int si, i, oi = lua_istable(L, 3) ? 3 : 0;
    lua_settop(L, 3);
    uv_get(L, SELF, "send");
    ls = luaL_checkudata(L, -1, SEND_MT);
    si = lua_gettop(L);
    for (i = 0; i < NSLOT && ls->s[i].used; i++)
        ;
    if (i == NSLOT)
        return luaL_error(L, "two messages are already in flight");
    if (slot_setup(L, ls, &ls->s[i], si, 2, oi, i + 1)) {
        slot_free(ls, &ls->s[i]);
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (mlr_smtp_send(lc->e, &ls->s[i].txn) != MLR_OK) {
        slot_free(ls, &ls->s[i]);
        return engine_fail(L, lc);
    }
    ls->s[i].queued = 1;
    lua_pushinteger(L, i + 1);
    return 1;
}

/* eng:result(slot) -> false (not done) | receipt | nil, err; frees the slot
 * once done. Also returns the octets of the body sent so far and the total. */
static int e_result(lua_State *L)
{
    lconn *lc = check_engine(L);
    lsend *ls;
    lua_Integer i = luaL_checkinteger(L, 2);
    slot *s;
    int n;
    uv_get(L, SELF, "send");
    ls = luaL_checkudata(L, -1, SEND_MT);
    luaL_argcheck(L, i >= 1 && i <= NSLOT && ls->s[i - 1].used, 2, "no such message in flight");
    s = &ls->s[i - 1];
    if (!s->txn.done) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, (lua_Integer)s->txn.body_sent);
        lua_pushinteger(L, (lua_Integer)s->total);
        return 3;
    }
    n = push_outcome(L, s, 0);
    slot_free(ls, s);
    (void)lc;
    return n;
}

/* eng:noop() / eng:rset() / eng:quit(): start the command (true), or a
 * misuse error when not idle. */
static int e_cmd(lua_State *L, int (*start)(mlr_smtp *))
{
    lconn *lc = check_engine(L);
    int rc = start(lc->e);
    if (rc == MLR_ERR_STATE)
        return luaL_error(L, "engine busy");
    if (rc)
        return engine_fail(L, lc);
    lua_pushboolean(L, 1);
    return 1;
}

static int e_noop(lua_State *L) { return e_cmd(L, mlr_smtp_noop); }
static int e_rset(lua_State *L) { return e_cmd(L, mlr_smtp_rset); }
static int e_quit(lua_State *L) { return e_cmd(L, mlr_smtp_quit); }

/* eng:cmd_result() -> true | nil, err (of the last NOOP / RSET) */
static int e_cmd_result(lua_State *L)
{
    lconn *lc = check_engine(L);
    const mlr_smtp_status *st = mlr_smtp_cmd_status(lc->e);
    if (st->err) {
        lua_pushnil(L);
        push_status_error(L, st);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* eng:set_trace(fn | nil): the trace callback from now on (a pooled
 * engine serves a later request, which brings its own). */
static int e_set_trace(lua_State *L)
{
    lconn *lc = check_engine(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lc->has_trace = lua_isfunction(L, 2);
    uv_set(L, SELF, "trace");
    return 0;
}

/* __gc / eng:close(): free the engine (idempotent). */
static int e_close(lua_State *L)
{
    lconn *lc = luaL_checkudata(L, 1, ENGINE_MT);
    if (lc->e) {
        mlr_smtp_free(lc->e);
        lc->e = NULL;
    }
    return 0;
}

static const luaL_Reg engine_methods[] = {
    {"want", e_want},       {"pending", e_pending}, {"consume", e_consume},
    {"feed", e_feed},       {"eof", e_eof},         {"tls_done", e_tls_done},
    {"fail", e_fail},       {"status", e_status},   {"capabilities", e_caps},
    {"queue", e_queue},     {"result", e_result},   {"noop", e_noop},
    {"rset", e_rset},       {"quit", e_quit},       {"cmd_result", e_cmd_result},
    {"set_trace", e_set_trace}, {"close", e_close},  {NULL, NULL}};

static const luaL_Reg conn_methods[] = {
    {"_send", l_send},
    {"_send_many", l_send_many},
    {"noop", l_noop},
    {"reset", l_reset},
    {"close", l_close},
    {NULL, NULL}};

void mlr_open_smtp(lua_State *L)
{
    luaL_newmetatable(L, CONN_MT);
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, conn_methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "connection_methods");   /* module.connection_methods: Lua adds methods */
    lua_pushcclosure(L, conn_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, SEND_MT);
    lua_pushcfunction(L, send_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_connect);
    lua_setfield(L, -2, "smtp_connect");
    luaL_newmetatable(L, ENGINE_MT);
    lua_pushcfunction(L, e_close);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, engine_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_engine);
    lua_setfield(L, -2, "smtp_engine");
}
