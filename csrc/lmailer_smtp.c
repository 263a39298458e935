/* lmailer_smtp.c - Lua binding of the SMTP engine (mailer.Engine).
 *
 * The engine is sans I/O and this binding keeps it that way: it never
 * calls Lua and never stores a lua_State. The one driver, in Lua
 * (lua/mailer/driver.lua), moves bytes between the engine and any socket
 * with the cosocket method set, delivers queued trace lines, calls body
 * sources when the engine says MLR_WANT_BODY and hands their bytes back,
 * and calls progress between steps. With the C socket (mailer.Socket),
 * write_to / read_from move bytes between the engine's buffers and the
 * socket without making Lua strings.
 *
 * Memory rule: nothing malloc'd is held across a call that can raise. The
 * engine, the trace queue and the messages in flight (transactions and
 * renderers) live in the engine userdata, whose __gc frees them; the Lua
 * values they borrow (messages, envelope strings, the last source chunk)
 * live in its user value, so the collector sees every reference. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lmailer.h"
#include "mime_message.h"
#include "smtp_engine.h"
#include "transport.h"

#define ENGINE_MT "mailer.Engine"
#define NSLOT MLR_SMTP_MAX_TXN   /* messages in flight (see e:window()) */

typedef struct slot {
    int used;
    int queued;             /* handed to the engine */
    mlr_smtp_txn txn;
    mlr_render *r;
    const char **rcpt;
    size_t *rcpt_len;
    size_t nrcpt;
    size_t rcpt_cap;        /* room in rcpt / rcpt_len (kept for the next message) */
    int ready;              /* txn initialised: its buffers are kept across messages */
    uint64_t total;
} slot;

/* User value: { slots = { [i] = { msg, opts, env_to, chunk = } } } */
typedef struct leng {
    mlr_smtp *e;
    mlr_alloc alloc;
    int tracing;            /* queue trace lines */
    mlr_buf trace;          /* queued lines: dir, 4-octet length, octets */
    slot s[NSLOT];
} leng;

/* Push an error object from a core status. */
static void push_status_error(lua_State *L, const mlr_smtp_status *st)
{
    int err = st->err ? st->err : MLR_ERR_PROTOCOL;
    const char *kind = err == MLR_ERR_NOMEM ? "protocol" : mlr_err_kind(err);
    mlr_push_error(L, kind, st->message, NULL, st->code ? st->code : -1, st->enhanced,
                   st->temporary);
}

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

/* Build the capabilities table from the EHLO text (linear). */
static void push_caps(lua_State *L, mlr_smtp *e)
{
    size_t len, i = 0, start, k;
    const char *t = mlr_smtp_ehlo_text(e, &len);
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
            const mlr_caps *c = mlr_smtp_caps(e);
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

/* The engine's trace hook: queue the line for the driver (no Lua here). */
static void trace_cb(void *ud, char dir, const char *line, size_t len)
{
    leng *le = ud;
    unsigned char hdr[5];
    if (!le->tracing || len > 0xffffffu)
        return;
    hdr[0] = (unsigned char)dir;
    hdr[1] = (unsigned char)(len >> 24);
    hdr[2] = (unsigned char)(len >> 16);
    hdr[3] = (unsigned char)(len >> 8);
    hdr[4] = (unsigned char)len;
    if (mlr_buf_add(&le->trace, hdr, 5) == MLR_OK)
        mlr_buf_add(&le->trace, line, len);   /* on failure the line is lost, not the session */
}

static leng *check_engine(lua_State *L)
{
    leng *le = luaL_checkudata(L, 1, ENGINE_MT);
    if (!le->e)
        luaL_error(L, "attempt to use a closed engine");
    return le;
}

/* Push nil, err for the engine's fatal error; 2. */
static int engine_fail(lua_State *L, leng *le)
{
    lua_pushnil(L);
    push_status_error(L, mlr_smtp_status_get(le->e));
    return 2;
}

/* Return true, or nil, err when the engine has failed. */
static int engine_ok(lua_State *L, leng *le)
{
    if (mlr_smtp_want(le->e) < 0)
        return engine_fail(L, le);
    lua_pushboolean(L, 1);
    return 1;
}

/* A message is over: the slot is free again. Its memory (rendering
 * buffers, recipient arrays, the transaction's reply buffers) stays for
 * the next message, so that sending many allocates nothing per message
 * in C; slot_free releases it. */
static void slot_release(slot *s)
{
    mlr_render_rest(s->r);
    if (s->ready)
        mlr_smtp_txn_clear(&s->txn);
    s->used = 0;
    s->queued = 0;
}

/* Release a slot's memory (safe to call twice). */
static void slot_free(leng *le, slot *s)
{
    if (s->r) {
        mlr_render_free(s->r);
        s->r = NULL;
    }
    if (s->rcpt) {
        mlr_free(&le->alloc, (void *)s->rcpt, s->rcpt_cap * sizeof *s->rcpt);
        s->rcpt = NULL;
    }
    if (s->rcpt_len) {
        mlr_free(&le->alloc, s->rcpt_len, s->rcpt_cap * sizeof *s->rcpt_len);
        s->rcpt_len = NULL;
    }
    s->rcpt_cap = 0;
    if (s->ready)
        mlr_smtp_txn_free(&s->txn);
    s->ready = 0;
    s->used = 0;
    s->queued = 0;
}

/* Push uservalue.slots of the engine at index 1. */
static void push_slots(lua_State *L)
{
    mlr_getuv(L, 1);
    lua_getfield(L, -1, "slots");
    lua_remove(L, -2);
}

/* Forget the Lua values slot i borrowed (its table stays, emptied, for
 * the next message). */
static void slot_forget(lua_State *L, int i)
{
    push_slots(L);
    lua_rawgeti(L, -1, i + 1);
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        lua_rawseti(L, -2, 1);
        lua_pushnil(L);
        lua_rawseti(L, -2, 2);
        lua_pushnil(L);
        lua_setfield(L, -2, "chunk");
    }
    lua_pop(L, 2);
}

/* Body reader: the renderer; a push source to supply or a slice of
 * signing work makes the engine wait (MLR_WANT_BODY). */
static int read_render(void *ud, const uint8_t **p, size_t *n)
{
    slot *s = ud;
    int rc = mlr_render_next(s->r, p, n);
    return rc == MLR_RENDER_NEED || rc == MLR_RENDER_BUSY ? MLR_BODY_WAIT : rc;
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

/* Set up slot i for the message at stack index 2 with options at 3 (a
 * table or nil); the Lua values it borrows go into uservalue.slots[i+1].
 * Returns 0, or pushes an error object and returns 1 (input problems). */
static int slot_setup(lua_State *L, leng *le, int i)
{
    slot *s = &le->s[i];
    mlr_msg *m = mlr_lua_msg_use(L, 2);   /* raises on misuse: nothing held yet */
    const mlr_dkim *dk = NULL;
    int oi = lua_istable(L, 3) ? 3 : 0, kt, envto = 0;
    size_t k, n;
    if (oi) {   /* a per-send signer (core.dkim_signer), alive in the options */
        mlr_dkim **ud;
        lua_getfield(L, oi, "dkim");
        ud = luaL_testudata(L, -1, "mailer.DkimSigner");
        if (ud)
            dk = *ud;
        lua_pop(L, 1);
    }
    if (!s->ready) {
        mlr_smtp_txn_init(&s->txn, &le->alloc);
        s->ready = 1;
    } else {
        mlr_smtp_txn_clear(&s->txn);
    }
    s->queued = 0;
    s->nrcpt = 0;
    s->total = 0;
    /* slots[i+1] = { msg, opts } keeps them (and their strings) alive; the
     * table of an earlier message in this slot is reused */
    push_slots(L);
    lua_rawgeti(L, -1, i + 1);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_createtable(L, 2, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, i + 1);
    }
    kt = lua_gettop(L);
    lua_pushvalue(L, 2);
    lua_rawseti(L, kt, 1);
    if (oi)
        lua_pushvalue(L, oi);
    else
        lua_pushnil(L);
    lua_rawseti(L, kt, 2);
    s->used = 1;

    s->txn.from = mlr_msg_env_from(m);
    s->txn.from_len = strlen(s->txn.from);
    n = mlr_msg_env_count(m);
    if (oi) {
        lua_getfield(L, oi, "envelope");
        if (lua_istable(L, -1)) {
            int ev = lua_gettop(L);
            lua_getfield(L, ev, "from");
            if (lua_type(L, -1) == LUA_TSTRING)
                s->txn.from = lua_tolstring(L, -1, &s->txn.from_len);   /* alive in opts */
            lua_pop(L, 1);
            lua_getfield(L, ev, "to");
            if (lua_istable(L, -1)) {
                envto = lua_gettop(L);
                n = lua_rawlen(L, envto);
            }
        }
    }
    if (n > SIZE_MAX / sizeof(size_t) / 2)
        luaL_error(L, "too many recipients");
    if (n > s->rcpt_cap || !s->rcpt) {   /* (else the room of an earlier message) */
        size_t cap = n ? n : 1;
        if (s->rcpt)
            mlr_free(&le->alloc, (void *)s->rcpt, s->rcpt_cap * sizeof *s->rcpt);
        if (s->rcpt_len)
            mlr_free(&le->alloc, s->rcpt_len, s->rcpt_cap * sizeof *s->rcpt_len);
        s->rcpt_cap = 0;
        s->rcpt = mlr_malloc(&le->alloc, cap * sizeof *s->rcpt);
        s->rcpt_len = mlr_malloc(&le->alloc, cap * sizeof *s->rcpt_len);
        if (!s->rcpt || !s->rcpt_len) {
            if (s->rcpt)
                mlr_free(&le->alloc, (void *)s->rcpt, cap * sizeof *s->rcpt);
            if (s->rcpt_len)
                mlr_free(&le->alloc, s->rcpt_len, cap * sizeof *s->rcpt_len);
            s->rcpt = NULL;
            s->rcpt_len = NULL;
            luaL_error(L, "out of memory");   /* the engine's __gc frees the slot */
        }
        s->rcpt_cap = cap;
    }
    s->nrcpt = n;
    for (k = 0; k < n; k++) {
        if (envto) {
            lua_rawgeti(L, envto, (lua_Integer)(k + 1));
            s->rcpt[k] = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &s->rcpt_len[k]) : NULL;
            lua_pop(L, 1);   /* alive in the envelope table */
            if (!s->rcpt[k]) {
                mlr_push_error(L, "input", "envelope.to must hold strings", "envelope.to", -1,
                               NULL, 0);
                return 1;
            }
        } else {
            s->rcpt[k] = mlr_msg_env_rcpt(m, k);
            s->rcpt_len[k] = strlen(s->rcpt[k]);
        }
    }
    lua_settop(L, 3);
    s->txn.rcpt = s->rcpt;
    s->txn.rcpt_len = s->rcpt_len;
    s->txn.nrcpt = n;
    s->total = mlr_msg_size_dkim(m, dk);
    s->txn.size = s->total;
    s->txn.utf8 = mlr_msg_needs_smtputf8(m);
    s->txn.eightbit = mlr_msg_needs_8bit(m);
    if (oi)
        parse_dsn(L, oi, &s->txn);
    s->r = mlr_render_reuse(s->r, m, dk);
    if (!s->r)
        luaL_error(L, "out of memory");
    mlr_render_set_stepped(s->r, 1);
    s->txn.read = read_render;
    s->txn.read_ud = s;
    s->txn.read_error = read_render_error;
    return 0;
}

/* Push the receipt of a finished transaction, or {error = err} / nil, err. */
static int push_outcome(lua_State *L, slot *s)
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
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

/* core.smtp_engine(opts) -> engine | nil, err. opts were checked by
 * mailer.smtp: host, port, security, helo, username, password, token,
 * auth (a list of mechanism names), allow_plaintext_auth, chunking,
 * tls.servername, trace (true: queue trace lines for e:traces()),
 * out_block (octets of body output per refill; 0: the engine's default). */
static int l_engine(lua_State *L)
{
    static const char *const secs[] = {"starttls", "starttls-optional", "tls", "none", NULL};
    static const int secv[] = {MLR_SEC_STARTTLS, MLR_SEC_STARTTLS_OPTIONAL, MLR_SEC_TLS,
                               MLR_SEC_NONE};
    leng *le;
    mlr_smtp_opts eo;
    int err, si;
    char errmsg[200], hostname[256];
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    memset(&eo, 0, sizeof eo);
    eo.port = (unsigned)opt_num(L, 1, "port", 587);
    lua_getfield(L, 1, "security");
    si = luaL_checkoption(L, 2, eo.port == 465 ? "tls" : "starttls", secs);
    lua_pop(L, 1);
    eo.security = secv[si];
    eo.helo = opt_str(L, 1, "helo", NULL);
    if (!eo.helo && gethostname(hostname, sizeof hostname) == 0 && hostname[0]) {
        hostname[sizeof hostname - 1] = '\0';
        eo.helo = hostname;   /* copied by mlr_smtp_new */
    }
    eo.host = opt_str(L, 1, "host", NULL);
    lua_getfield(L, 1, "tls");
    if (lua_istable(L, -1)) {   /* OAUTHBEARER names the server the client verifies */
        const char *sn = opt_str(L, lua_gettop(L), "servername", NULL);
        if (sn)
            eo.host = sn;   /* alive in opts */
    }
    lua_pop(L, 1);
    eo.username = opt_str(L, 1, "username", &eo.username_len);
    eo.password = opt_str(L, 1, "password", &eo.password_len);
    eo.token = opt_str(L, 1, "token", &eo.token_len);
    eo.allow_plaintext_auth = opt_bool(L, 1, "allow_plaintext_auth", 0);
    eo.no_chunking = !opt_bool(L, 1, "chunking", 1);
    eo.out_block = (size_t)opt_num(L, 1, "out_block", 0);
    lua_getfield(L, 1, "auth");
    if (lua_istable(L, -1)) {
        size_t i, n = lua_rawlen(L, -1);
        for (i = 1; i <= n; i++) {
            size_t l;
            const char *m;
            unsigned mech;
            lua_rawgeti(L, -1, (lua_Integer)i);
            m = luaL_checklstring(L, -1, &l);
            mech = mlr_mech_from_name(m, l);
            if (!mech)
                return luaL_error(L, "unknown AUTH mechanism '%s'", m);
            if (eo.auth_npref < sizeof eo.auth_pref / sizeof eo.auth_pref[0])
                eo.auth_pref[eo.auth_npref++] = mech;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    /* allocate, then acquire */
    le = lua_newuserdatauv(L, sizeof *le, 1);
    memset(le, 0, sizeof *le);
    luaL_getmetatable(L, ENGINE_MT);
    lua_setmetatable(L, -2);
    lua_createtable(L, 0, 1);
    lua_newtable(L);
    lua_setfield(L, -2, "slots");
    mlr_setuv(L, -2);
    mlr_lua_alloc(L, &le->alloc);
    mlr_buf_init(&le->trace, &le->alloc);
    le->tracing = opt_bool(L, 1, "trace", 0);
    eo.trace = trace_cb;
    eo.trace_ud = le;
    le->e = mlr_smtp_new(&le->alloc, &eo, &err, errmsg, sizeof errmsg);
    if (!le->e) {
        if (err == MLR_ERR_NOMEM)
            return luaL_error(L, "out of memory");
        return mlr_fail(L, "input", errmsg, NULL);
    }
    return 1;
}

/* e:want() -> read, write, tls, done, body (booleans), step id | nil, err */
static int e_want(lua_State *L)
{
    leng *le = check_engine(L);
    int w = mlr_smtp_want(le->e);
    if (w < 0)
        return engine_fail(L, le);
    lua_pushboolean(L, w & MLR_WANT_READ);
    lua_pushboolean(L, w & MLR_WANT_WRITE);
    lua_pushboolean(L, w & MLR_WANT_TLS);
    lua_pushboolean(L, w & MLR_WANT_DONE);
    lua_pushboolean(L, w & MLR_WANT_BODY);
    lua_pushinteger(L, (lua_Integer)mlr_smtp_step_id(le->e));
    return 6;
}

/* e:pending() -> string (the bytes to write; "" when none) */
static int e_pending(lua_State *L)
{
    leng *le = check_engine(L);
    const uint8_t *p;
    size_t n = mlr_smtp_pending(le->e, &p);
    lua_pushlstring(L, n ? (const char *)p : "", n);
    return 1;
}

/* e:write_to(sock) -> true [, "readable"] | nil, err, kind: write the
 * pending bytes to a C socket (mailer.Socket) straight from the engine's
 * buffer, with the socket's send timeout; a few blocks per call, so that
 * the driver runs progress and deadlines in between. It stops early, with
 * "readable", when the server has sent something meanwhile (replies to
 * pipelined chunks, or an early refusal in the middle of DATA), so the
 * driver reads it before writing on: a server blocked on writing its
 * replies never deadlocks against us. Errors as sock:send gives them. */
static int e_write_to(lua_State *L)
{
    leng *le = check_engine(L);
    mlr_sock *sk = mlr_lua_tosocket(L, 2);
    int rounds;
    if (!sk) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "network");
        return 3;
    }
    for (rounds = 0; rounds < 8; rounds++) {
        const uint8_t *p;
        char err[256];
        size_t n = mlr_smtp_pending(le->e, &p);
        int rc;
        if (n == 0)
            break;
        rc = mlr_sock_write(sk, p, n, -1, err, sizeof err);
        if (rc != MLR_OK) {
            lua_pushnil(L);
            if (rc == MLR_ERR_TIMEOUT)
                lua_pushliteral(L, "timeout");
            else
                lua_pushstring(L, err);
            lua_pushstring(L, mlr_err_kind(rc));
            return 3;
        }
        mlr_smtp_consume(le->e, n);
        if (!(mlr_smtp_want(le->e) & MLR_WANT_WRITE))
            break;
    }
    lua_pushboolean(L, 1);
    /* in the middle of a body, the server may refuse early: has it spoken?
     * (once the message is out, the driver reads next anyway) */
    if ((mlr_smtp_body_txn(le->e) || (mlr_smtp_want(le->e) & MLR_WANT_WRITE)) &&
        mlr_sock_readable(sk)) {
        lua_pushliteral(L, "readable");
        return 2;
    }
    return 1;
}

/* e:read_from(sock) -> true | nil, err, kind: feed the engine what a C
 * socket (mailer.Socket) received, without a Lua string between them;
 * errors as sock:receiveany gives them ("timeout", "closed", ...). */
static int e_read_from(lua_State *L)
{
    leng *le = check_engine(L);
    const char *p = NULL;
    char err[256] = "";
    long n = mlr_lua_socket_recv(L, 2, &p, err, sizeof err);
    if (n > 0) {
        mlr_smtp_feed(le->e, (const uint8_t *)p, (size_t)n);
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    if (n == 0)
        lua_pushliteral(L, "closed");
    else if (n == MLR_ERR_TIMEOUT)
        lua_pushliteral(L, "timeout");
    else
        lua_pushstring(L, err);
    lua_pushstring(L, n == 0 ? "network" : mlr_err_kind((int)n));
    return 3;
}

/* core.is_socket(v) -> true when v is a mailer.Socket (open or not) */
static int l_is_socket(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, "mailer.Socket") != NULL);
    return 1;
}

/* e:consume(n): n pending bytes were written */
static int e_consume(lua_State *L)
{
    leng *le = check_engine(L);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "negative count");
    mlr_smtp_consume(le->e, (size_t)n);
    return 0;
}

/* e:feed(bytes) -> true | nil, err */
static int e_feed(lua_State *L)
{
    leng *le = check_engine(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    mlr_smtp_feed(le->e, (const uint8_t *)s, n);
    return engine_ok(L, le);
}

/* e:eof() -> true | nil, err (the server closed the connection) */
static int e_eof(lua_State *L)
{
    leng *le = check_engine(L);
    mlr_smtp_eof(le->e);
    return engine_ok(L, le);
}

/* e:tls_done() -> true | nil, err */
static int e_tls_done(lua_State *L)
{
    leng *le = check_engine(L);
    if (mlr_smtp_tls_done(le->e) == MLR_ERR_STATE)
        return luaL_error(L, "the engine did not ask for TLS");
    return engine_ok(L, le);
}

/* e:fail(kind, message [, temporary]): record a driver failure (kind
 * "network", "timeout", "tls", "input"); every outstanding message fails. */
static int e_fail(lua_State *L)
{
    static const char *const kinds[] = {"network", "timeout", "tls", "input", NULL};
    static const int errs[] = {MLR_ERR_NETWORK, MLR_ERR_TIMEOUT, MLR_ERR_TLS, MLR_ERR_INPUT};
    leng *le = check_engine(L);
    int k = luaL_checkoption(L, 2, NULL, kinds);
    const char *msg = luaL_checkstring(L, 3);
    int temp = lua_isnoneornil(L, 4) ? (k == 0 || k == 1) : lua_toboolean(L, 4);
    mlr_smtp_fail(le->e, errs[k], temp, "%s", msg);
    return 0;
}

/* e:status() -> ready, step name, step id, tls active */
static int e_status(lua_State *L)
{
    leng *le = check_engine(L);
    lua_pushboolean(L, mlr_smtp_ready(le->e));
    lua_pushstring(L, mlr_smtp_step_name(le->e));
    lua_pushinteger(L, (lua_Integer)mlr_smtp_step_id(le->e));
    lua_pushboolean(L, mlr_smtp_tls_active(le->e));
    return 4;
}

/* e:step_id() -> the id of the step under way (it changes when one ends) */
static int e_step_id(lua_State *L)
{
    leng *le = check_engine(L);
    lua_pushinteger(L, (lua_Integer)mlr_smtp_step_id(le->e));
    return 1;
}

/* e:step_name() -> what the engine waits for, in words */
static int e_step_name(lua_State *L)
{
    leng *le = check_engine(L);
    lua_pushstring(L, mlr_smtp_step_name(le->e));
    return 1;
}

/* e:capabilities() -> table */
static int e_caps(lua_State *L)
{
    leng *le = check_engine(L);
    push_caps(L, le->e);
    return 1;
}

/* e:traces() -> { dir, line, dir, line, ... } | nil: the queued trace
 * lines, oldest first; the queue is emptied. */
static int e_traces(lua_State *L)
{
    leng *le = check_engine(L);
    size_t i = 0, k = 0;
    const unsigned char *b = (const unsigned char *)le->trace.data;
    if (le->trace.len == 0)
        return 0;
    lua_createtable(L, 8, 0);
    while (i + 5 <= le->trace.len) {
        size_t n = (size_t)b[i + 1] << 24 | (size_t)b[i + 2] << 16 | (size_t)b[i + 3] << 8 | b[i + 4];
        char d = (char)b[i];
        lua_pushlstring(L, &d, 1);
        lua_rawseti(L, -2, (lua_Integer)++k);
        lua_pushlstring(L, (const char *)b + i + 5, n);
        lua_rawseti(L, -2, (lua_Integer)++k);
        i += 5 + n;
    }
    mlr_buf_reset(&le->trace);
    return 1;
}

/* e:set_trace(on): queue trace lines from now on, or not (a pooled engine
 * serves a later request, which brings its own callback). */
static int e_set_trace(lua_State *L)
{
    leng *le = check_engine(L);
    le->tracing = lua_toboolean(L, 2);
    if (!le->tracing)
        mlr_buf_reset(&le->trace);
    return 0;
}

/* e:window() -> how many messages are worth having in flight at once */
static int e_window(lua_State *L)
{
    leng *le = check_engine(L);
    size_t w = mlr_smtp_window(le->e);
    lua_pushinteger(L, (lua_Integer)(w < NSLOT ? w : NSLOT));
    return 1;
}

/* e:queue(msg [, opts]) -> slot | nil, err: start sending a message (at
 * most NSLOT at a time); poll e:result(slot). */
static int e_queue(lua_State *L)
{
    leng *le = check_engine(L);
    int i;
    lua_settop(L, 3);
    for (i = 0; i < NSLOT && le->s[i].used; i++)
        ;
    if (i == NSLOT)
        return luaL_error(L, "%d messages are already in flight", NSLOT);
    if (slot_setup(L, le, i)) {
        slot_release(&le->s[i]);
        slot_forget(L, i);
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (mlr_smtp_send(le->e, &le->s[i].txn) != MLR_OK) {
        slot_release(&le->s[i]);
        slot_forget(L, i);
        return engine_fail(L, le);
    }
    le->s[i].queued = 1;
    lua_pushinteger(L, i + 1);
    return 1;
}

static slot *check_slot(lua_State *L, leng *le, int idx)
{
    lua_Integer i = luaL_checkinteger(L, idx);
    luaL_argcheck(L, i >= 1 && i <= NSLOT && le->s[i - 1].used, idx, "no such message in flight");
    return &le->s[i - 1];
}

/* e:result(slot) -> false, sent, total (not done) | receipt, nil, sent,
 * total | nil, err, sent, total; frees the slot once done. sent counts
 * octets of the body read so far (total is nil when unknown). */
static int e_result(lua_State *L)
{
    leng *le = check_engine(L);
    slot *s = check_slot(L, le, 2);
    int n;
    if (!s->txn.done) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, (lua_Integer)s->txn.body_sent);
        if (s->total)
            lua_pushinteger(L, (lua_Integer)s->total);
        else
            lua_pushnil(L);
        return 3;
    }
    n = push_outcome(L, s);
    if (n == 1)
        lua_pushnil(L);
    lua_pushinteger(L, (lua_Integer)s->txn.body_sent);
    if (s->total)
        lua_pushinteger(L, (lua_Integer)s->total);
    else
        lua_pushnil(L);
    slot_release(s);
    slot_forget(L, (int)(s - le->s));
    return 4;
}

/* e:sent(slot) -> true once the message's last octet (final dot or BDAT
 * LAST) was handed out: from then on only the server's reply is missing. */
static int e_sent(lua_State *L)
{
    leng *le = check_engine(L);
    slot *s = check_slot(L, le, 2);
    lua_pushboolean(L, s->txn.done || s->txn.body_done);
    return 1;
}

/* The slot whose body the engine is reading, or NULL. */
static slot *body_slot(leng *le)
{
    mlr_smtp_txn *t = mlr_smtp_body_txn(le->e);
    int i;
    for (i = 0; t && i < NSLOT; i++)
        if (le->s[i].used && &le->s[i].txn == t)
            return &le->s[i];
    return NULL;
}

/* e:need() -> source function (call it under pcall, then e:supply(...)),
 * or nothing when the body only did a slice of work (it goes on by itself). */
static int e_need(lua_State *L)
{
    leng *le = check_engine(L);
    slot *s = body_slot(le);
    if (s && mlr_render_need(s->r) >= 0) {
        push_slots(L);
        lua_rawgeti(L, -1, (int)(s - le->s) + 1);
        lua_rawgeti(L, -1, 1);   /* the message */
        mlr_lua_push_needed(L, lua_gettop(L), s->r);
        return 1;
    }
    mlr_smtp_body_resume(le->e);
    return 0;
}

/* e:supply(ok, chunk | nil [, err]): what the source e:need() returned gave
 * under pcall. A failure or a size mismatch fails the send at the next
 * step, before its end reaches the wire. */
static int e_supply(lua_State *L)
{
    leng *le = check_engine(L);
    slot *s = body_slot(le);
    lua_settop(L, 4);
    if (!s || mlr_render_need(s->r) < 0)
        return luaL_error(L, "the engine did not ask for source bytes");
    push_slots(L);
    lua_rawgeti(L, -1, (int)(s - le->s) + 1);
    mlr_lua_supply(L, s->r, lua_gettop(L), 2);   /* errors are sticky in the renderer */
    mlr_smtp_body_resume(le->e);
    return 0;
}

/* e:noop() / e:rset() / e:quit(): start the command (true), or a misuse
 * error when not idle. */
static int e_cmd(lua_State *L, int (*start)(mlr_smtp *))
{
    leng *le = check_engine(L);
    int rc = start(le->e);
    if (rc == MLR_ERR_STATE)
        return luaL_error(L, "engine busy");
    if (rc)
        return engine_fail(L, le);
    lua_pushboolean(L, 1);
    return 1;
}

static int e_noop(lua_State *L) { return e_cmd(L, mlr_smtp_noop); }
static int e_rset(lua_State *L) { return e_cmd(L, mlr_smtp_rset); }
static int e_quit(lua_State *L) { return e_cmd(L, mlr_smtp_quit); }

/* e:cmd_result() -> true | nil, err (of the last NOOP / RSET) */
static int e_cmd_result(lua_State *L)
{
    leng *le = check_engine(L);
    const mlr_smtp_status *st = mlr_smtp_cmd_status(le->e);
    if (st->err) {
        lua_pushnil(L);
        push_status_error(L, st);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* __gc / __close / e:close(): free the engine and what is in flight
 * (idempotent). */
static int e_close(lua_State *L)
{
    leng *le = luaL_checkudata(L, 1, ENGINE_MT);
    int i;
    for (i = 0; i < NSLOT; i++)   /* (free slots keep memory too) */
        slot_free(le, &le->s[i]);
    if (le->e) {
        mlr_smtp_free(le->e);
        le->e = NULL;
    }
    mlr_buf_free(&le->trace);
    return 0;
}

static int e_tostring(lua_State *L)
{
    leng *le = luaL_checkudata(L, 1, ENGINE_MT);
    lua_pushfstring(L, "mailer.Engine (%s): %p", le->e ? "open" : "closed", (void *)le);
    return 1;
}

static const luaL_Reg engine_methods[] = {
    {"want", e_want},         {"pending", e_pending},       {"consume", e_consume},
    {"write_to", e_write_to}, {"read_from", e_read_from},
    {"feed", e_feed},         {"eof", e_eof},               {"tls_done", e_tls_done},
    {"fail", e_fail},         {"status", e_status},         {"capabilities", e_caps},
    {"step_id", e_step_id},   {"step_name", e_step_name},
    {"traces", e_traces},     {"set_trace", e_set_trace},   {"queue", e_queue},
    {"result", e_result},     {"sent", e_sent},   {"window", e_window},             {"need", e_need},
    {"supply", e_supply},     {"noop", e_noop},             {"rset", e_rset},
    {"quit", e_quit},         {"cmd_result", e_cmd_result}, {"close", e_close},
    {NULL, NULL}};

void mlr_open_smtp(lua_State *L)
{
    luaL_newmetatable(L, ENGINE_MT);
    lua_pushcfunction(L, e_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, e_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, e_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, engine_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_engine);
    lua_setfield(L, -2, "smtp_engine");
    lua_pushcfunction(L, l_is_socket);
    lua_setfield(L, -2, "is_socket");
}
