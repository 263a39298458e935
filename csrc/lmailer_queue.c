/* lmailer_queue.c - the file-system primitives of the queue
 * (lua/mailer/queue.lua), which Lua alone does not have:
 *
 *   core.q_file(path)       a new file (O_EXCL, mode 0600) to write and fsync
 *   core.q_fsync_dir(path)  make a directory's entries (renames) durable
 *   core.q_lock(path)       an exclusive flock on a queue entry's directory,
 *                           held by a userdata until unlock / __close / __gc,
 *                           and by the kernel until the process dies
 *   core.q_scan(path)       the names in a directory, with type and mtime
 *   core.q_exists(path)     whether anything is there (readable or not)
 *   core.q_now()            the wall clock with sub-second precision
 *
 * Failures return nil and a one-line message (the queue turns them into
 * error objects with its own field names); misuse raises. Every object is
 * a userdata made before the file or directory is opened, so that __gc can
 * always close it (allocate, then acquire). */
#include "lmailer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QFILE_MT "mailer.QueueFile"
#define QLOCK_MT "mailer.QueueLock"
#define QSCAN_MT "mailer.QueueScan"

/* Push nil and "<what> '<path>': <strerror(err)>"; returns 2. */
static int fail_errno(lua_State *L, const char *what, const char *path, int err)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s '%s': %s", what, path, strerror(err));
    return 2;
}

/* A path argument without NUL bytes. */
static const char *check_path(lua_State *L, int idx)
{
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    luaL_argcheck(L, n > 0 && strlen(p) == n, idx, "path is empty or has a NUL byte");
    return p;
}

/* ---- files written durably ---- */

typedef struct qfile {
    int fd; /* -1 once closed */
} qfile;

/* The idempotent destructor of __gc, __close and close(). */
static int qfile_close(lua_State *L)
{
    qfile *f = luaL_checkudata(L, 1, QFILE_MT);
    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
    return 0;
}

static qfile *check_open_file(lua_State *L)
{
    qfile *f = luaL_checkudata(L, 1, QFILE_MT);
    if (f->fd < 0)
        luaL_error(L, "attempt to use a closed queue file");
    return f;
}

/* core.q_file(path) -> file | nil, message: creates path (which must not
 * exist) for writing, readable by its owner only (the queue holds other
 * people's mail). */
static int l_q_file(lua_State *L)
{
    const char *path = check_path(L, 1);
    qfile *f = lua_newuserdatauv(L, sizeof *f, 0);
    f->fd = -1;
    luaL_getmetatable(L, QFILE_MT);
    lua_setmetatable(L, -2);
    do
        f->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    while (f->fd < 0 && errno == EINTR);
    if (f->fd < 0)
        return fail_errno(L, "cannot create", path, errno);
    return 1;
}

/* file:write(s) -> true | nil, message: all of s, or an error. */
static int qfile_write(lua_State *L)
{
    qfile *f = check_open_file(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    while (n > 0) {
        ssize_t w = write(f->fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return fail_errno(L, "cannot write", "queue file", errno);
        }
        s += w;
        n -= (size_t)w;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* file:sync() -> true | nil, message: fsync, then close (a close error
 * counts too: on some file systems it reports a lost write). */
static int qfile_sync(lua_State *L)
{
    qfile *f = check_open_file(L);
    int fd = f->fd, e = 0;
    f->fd = -1;
    if (fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && e == 0 && errno != EINTR)
        e = errno;
    if (e)
        return fail_errno(L, "cannot sync", "queue file", e);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.q_fsync_dir(path) -> true | nil, message: fsync a directory, so
 * that the files created, renamed or removed in it stay so after a crash.
 * File systems that cannot sync a directory (EINVAL) are taken as done. */
static int l_q_fsync_dir(lua_State *L)
{
    const char *path = check_path(L, 1);
    int fd, e = 0;
    do
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return fail_errno(L, "cannot open directory", path, errno);
    if (fsync(fd) != 0 && errno != EINVAL)
        e = errno;
    close(fd);
    if (e)
        return fail_errno(L, "cannot sync directory", path, e);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- entry locks ---- */

typedef struct qlock {
    int fd; /* -1 once unlocked */
} qlock;

/* The idempotent destructor of __gc, __close and unlock(): closing the
 * descriptor drops the flock. */
static int qlock_unlock(lua_State *L)
{
    qlock *k = luaL_checkudata(L, 1, QLOCK_MT);
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    return 0;
}

/* core.q_lock(path) -> lock | nil, message, reason: an exclusive,
 * non-blocking flock on the directory at path. reason is "busy" (another
 * process holds it), "gone" (path no longer names the directory that was
 * locked: the entry was removed meanwhile) or "error". */
static int l_q_lock(lua_State *L)
{
    const char *path = check_path(L, 1);
    struct stat a, b;
    qlock *k = lua_newuserdatauv(L, sizeof *k, 0);
    k->fd = -1;
    luaL_getmetatable(L, QLOCK_MT);
    lua_setmetatable(L, -2);
    do
        k->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    while (k->fd < 0 && errno == EINTR);
    if (k->fd < 0) {
        int e = errno;
        fail_errno(L, "cannot open", path, e);
        lua_pushstring(L, e == ENOENT ? "gone" : "error");
        return 3;
    }
    while (flock(k->fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e == EINTR)
            continue;
        close(k->fd);
        k->fd = -1;
        if (e == EWOULDBLOCK) {
            lua_pushnil(L);
            lua_pushfstring(L, "'%s' is locked by another process", path);
            lua_pushliteral(L, "busy");
            return 3;
        }
        fail_errno(L, "cannot lock", path, e);
        lua_pushliteral(L, "error");
        return 3;
    }
    /* the entry may have been renamed away (delivered, removed) between
     * our open and the lock: then what we hold is not the entry any more */
    if (fstat(k->fd, &a) != 0 || lstat(path, &b) != 0 || a.st_dev != b.st_dev ||
        a.st_ino != b.st_ino) {
        close(k->fd);
        k->fd = -1;
        lua_pushnil(L);
        lua_pushfstring(L, "'%s' was removed", path);
        lua_pushliteral(L, "gone");
        return 3;
    }
    return 1;
}

/* ---- directory listing ---- */

typedef struct qscan {
    DIR *d; /* NULL once closed */
} qscan;

static void qscan_close(qscan *s)
{
    if (s->d) {
        closedir(s->d);
        s->d = NULL;
    }
}

static int qscan_gc(lua_State *L)
{
    qscan_close(luaL_checkudata(L, 1, QSCAN_MT));
    return 0;
}

/* core.q_scan(path) -> { {name=, dir=bool, mtime=}, ... } | nil, message,
 * missing (true when path does not exist):
 * every name in the directory but . and .. (unsorted); symbolic links are
 * not followed (dir=false). A name that vanished while listed is left
 * out. The DIR handle lives in a userdata, so an error raised while the
 * table grows cannot leak it. */
static int l_q_scan(lua_State *L)
{
    const char *path = check_path(L, 1);
    struct dirent *de;
    lua_Integer n = 0;
    qscan *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->d = NULL;
    luaL_getmetatable(L, QSCAN_MT);
    lua_setmetatable(L, -2);
    s->d = opendir(path);
    if (!s->d) {
        int e = errno;
        fail_errno(L, "cannot read directory", path, e);
        lua_pushboolean(L, e == ENOENT);
        return 3;
    }
    lua_newtable(L);
    for (;;) {
        struct stat st;
        errno = 0;
        de = readdir(s->d);
        if (!de) {
            if (errno) {
                int e = errno;
                qscan_close(s);
                return fail_errno(L, "cannot read directory", path, e);
            }
            break;
        }
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (fstatat(dirfd(s->d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        lua_createtable(L, 0, 3);
        lua_pushstring(L, de->d_name);
        lua_setfield(L, -2, "name");
        lua_pushboolean(L, S_ISDIR(st.st_mode));
        lua_setfield(L, -2, "dir");
        lua_pushnumber(L, (lua_Number)st.st_mtime);
        lua_setfield(L, -2, "mtime");
        lua_rawseti(L, -2, ++n);
    }
    qscan_close(s);
    return 1;
}

/* core.q_exists(path) -> false when nothing is at path (ENOENT, ENOTDIR),
 * else true (also when it cannot be read: it is there all the same) */
static int l_q_exists(lua_State *L)
{
    struct stat st;
    const char *path = check_path(L, 1);
    lua_pushboolean(L, lstat(path, &st) == 0 || (errno != ENOENT && errno != ENOTDIR));
    return 1;
}

/* core.q_now() -> seconds since the epoch, with a fraction */
static int l_q_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static const luaL_Reg qfile_methods[] = {
    {"write", qfile_write}, {"sync", qfile_sync}, {"close", qfile_close}, {NULL, NULL}};

static const luaL_Reg queue_funcs[] = {
    {"q_file", l_q_file}, {"q_fsync_dir", l_q_fsync_dir}, {"q_lock", l_q_lock},
    {"q_scan", l_q_scan}, {"q_exists", l_q_exists},       {"q_now", l_q_now},
    {NULL, NULL}};

/* Register one metatable with __gc and __close set to fn, and methods. */
static void new_type(lua_State *L, const char *name, lua_CFunction fn, const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, "__close");
    if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

void mlr_open_queue(lua_State *L)
{
    static const luaL_Reg lock_methods[] = {{"unlock", qlock_unlock}, {NULL, NULL}};
    new_type(L, QFILE_MT, qfile_close, qfile_methods);
    new_type(L, QLOCK_MT, qlock_unlock, lock_methods);
    new_type(L, QSCAN_MT, qscan_gc, NULL);
    luaL_setfuncs(L, queue_funcs, 0);
}
