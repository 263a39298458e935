-- mailer.driver: the one SMTP driver. It runs the C engine
-- (core.smtp_engine: bytes in, bytes out, no sockets, no callbacks into
-- Lua) over any socket with the cosocket method set: the C socket
-- (core.socket(): blocking, OpenSSL, poll with deadlines), an OpenResty
-- cosocket (ngx.socket.tcp()), or any object with the same methods.
--
-- Every user callback runs here, in Lua, between engine steps: trace
-- lines the engine queued, progress, body sources (the engine says "body"
-- when its renderer waits for one; the driver calls it and hands the bytes
-- back) and the send_many producer. So a callback may yield wherever the
-- socket yields, and nothing in C runs on a stale lua_State. Callbacks
-- are hostile by assumption: each runs under pcall; one that raises, or
-- closes the connection, ends the send in a defined way (see "callback
-- errors" below), and one that calls back into a busy connection gets a
-- clear error.
--
-- Deadlines are per protocol step: a step (the greeting, the reply to
-- RCPT, sending the body...) gets `timeout` seconds in all however the
-- bytes trickle; each socket call gets what is left. The engine's step id
-- changes when a step completes; a source that yields bytes counts too.
--
-- Pooling (nginx cosockets only): setkeepalive parks the socket in the
-- cosocket pool named by everything that shapes a session (host, port,
-- security, TLS verification and name, HELO, user, a keyed hash of the
-- secret), and the engine that knows the session's state in a per-worker
-- list under the same name; connect takes both back after a NOOP check.
local core = require "mailer.core"

local type, ipairs, error, tostring, tonumber, pcall, select =
      type, ipairs, error, tostring, tonumber, pcall, select
local setmetatable, getmetatable = setmetatable, getmetatable
local floor = math.floor
local ngx = rawget(_G, "ngx")

local M = {}

-- Seconds, with sub-second precision where the host offers it.
local now
if ngx and ngx.now then
  now = function() ngx.update_time(); return ngx.now() end
elseif core.monotime then
  now = core.monotime
else
  local ok, socket = pcall(require, "socket")
  now = ok and socket.gettime or os.time
end

-- The phases in which cosockets can yield (ngx_lua's documentation of
-- ngx.socket.tcp); elsewhere (init, init_worker, set, log, header and body
-- filters, balancer) the C socket is used, which blocks.
local yieldable = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}

-- True when running inside nginx where a cosocket can be used.
function M.available()
  if not (ngx and ngx.get_phase and ngx.socket and ngx.socket.tcp) then return false end
  local ok, phase = pcall(ngx.get_phase)
  return ok and yieldable[phase] == true
end

---------------------------------------------------------------------------
-- errors
---------------------------------------------------------------------------

local function new_error(kind, message, temporary)
  return core.error { kind = kind, message = message, temporary = temporary and true or false }
end

-- The "connection is closed" error of a connection whose engine failed.
local function broken_error(err)
  return new_error("network", "the connection is closed (after: " ..
    tostring(err and err.message or "an earlier error") .. ")", true)
end

-- Certificate verification failures as ngx_lua reports them ("<X509 code>:
-- <text>", or "certificate host mismatch"), in the words of the C socket.
local verify_reasons = {
  [9] = "the server certificate is not yet valid",
  [10] = "the server certificate has expired",
  [18] = "the server certificate is self-signed (not trusted)",
  [19] = "the server certificate is self-signed (not trusted)",
  [20] = "the server certificate was issued by an unknown (untrusted) CA",
  [2] = "the server certificate was issued by an unknown (untrusted) CA",
  [62] = "host name mismatch: the certificate is not valid for this server name",
  [64] = "host name mismatch: the certificate is not valid for this server name",
}

-- kind, message, temporary for a failed sslhandshake. The C socket says
-- the kind itself (third value) and words the message already.
local function tls_error(name, port, timeout, err, kind)
  err = tostring(err)
  if err == "timeout" then
    return "timeout", ("timeout during the TLS handshake (%s s)"):format(tostring(timeout)), true
  end
  if kind then return kind, err, kind ~= "tls" end
  local code = tonumber(err:match("^(%d+): "))
  local why = code and verify_reasons[code]
  if not why and err:find("host mismatch", 1, true) then why = verify_reasons[62] end
  if not why and err:find("self[- ]signed") then why = verify_reasons[18] end
  if not why and err:find("expired", 1, true) then why = verify_reasons[10] end
  if not why and err:find("certificate verification failed", 1, true) then why = err end
  if code or why then
    return "tls", ("TLS handshake with %s failed: certificate verification: %s (%s)")
      :format(name, why or err, err), false
  end
  return "tls", ("TLS handshake with %s:%d failed: %s"):format(name, port, err), true
end

-- sock:sslhandshake, protected: Debian's lua-resty-core asserts (raises)
-- when a handshake that completed at once fails its verification
-- afterwards; that is a failed verification whose reason nginx did not
-- pass on, never a reason to unwind through the driver.
local function handshake(sock, servername, verify)
  local ok, a, b, c = pcall(sock.sslhandshake, sock, nil, servername, verify)
  if ok then return a, b, c end
  return nil, "certificate verification failed (the socket layer raised: " .. tostring(a) .. ")"
end

---------------------------------------------------------------------------
-- the connection object
---------------------------------------------------------------------------

local Conn = {}
local methods = {}
Conn.__index = methods
Conn.__name = "mailer.Connection"
M.methods = methods   -- mailer.smtp adds send and send_many

function Conn.__tostring(self)
  return ("mailer.Connection (%s, %s): %s"):format(self.closed and "closed" or "open",
    self.kind == "c" and "C socket" or "cosocket", self.id)
end

-- Is v a connection of this driver?
function M.is_connection(v) return getmetatable(v) == Conn end

local function check_open(self, fname)
  if getmetatable(self) ~= Conn then
    error(("bad argument #1 to '%s' (mailer.Connection expected)"):format(fname), 3)
  end
  if self.closed then error("attempt to use a closed connection", 3) end
  if self.busy then
    error(("connection busy: '%s' called from inside one of its own callbacks " ..
           "(trace, progress, source or producer)"):format(fname), 3)
  end
end

-- Close the socket and forget it (the engine stays, failed, to report).
local function drop(self)
  local sock = self.sock
  if sock then
    self.sock = nil
    pcall(sock.close, sock)
  end
end

-- Record a driver failure in the engine and close the socket; returns
-- nil, err (the engine's error object).
local function fail(self, kind, message, temporary)
  self.e:fail(kind, message, temporary)
  drop(self)
  local _, err = self.e:want()
  return nil, err
end

-- Set every timeout of the socket to what is left of the step (ms),
-- rounded down to 100 ms while more than a second is left, so that a run
-- of quick calls does not set them again each time (a call never
-- outlives the step's deadline either way).
local function set_left(self, left)
  local ms = floor(left * 1000)
  if ms > 1000 then ms = ms - ms % 100 elseif ms < 1 then ms = 1 end
  if ms == self.tmo_ms then return end
  self.tmo_ms = ms
  local sock = self.sock
  if sock.settimeouts then sock:settimeouts(ms, ms, ms) else sock:settimeout(ms) end
end

-- After a fatal error: write what the engine still has (a polite QUIT,
-- if any) without waiting long, then close.
local function flush_polite(self)
  local sock = self.sock
  if not sock then return end
  local data = self.e:pending()
  if #data > 0 then
    set_left(self, 1)
    pcall(sock.send, sock, data)
  end
  drop(self)
end

---------------------------------------------------------------------------
-- callbacks
---------------------------------------------------------------------------

-- Run a user callback protected. A raise is recorded (the first one wins)
-- and callbacks stop; returns ok, results...
local function keep(self, ok, ...)
  if not ok then
    self.cb_failed = true   -- no more callbacks in this send
    self.cb_new = true      -- after_callback has yet to act on it
    self.cb_err = ...
  end
  return ok, ...
end

local function callback(self, fn, ...)
  if self.cb_failed then return false end
  return keep(self, pcall(fn, ...))
end

-- Hand the engine's queued trace lines to the trace callback.
local function deliver_traces(self)
  local trace = self.trace
  if not trace then return end   -- (the engine queues nothing then)
  local lines = self.e:traces()
  if not lines then return end
  for i = 1, #lines, 2 do
    if not callback(self, trace, lines[i], lines[i + 1]) then return end
  end
end

-- Call progress(sent, total) for an in-flight record when sent changed.
local function report(self, rec, sent, total)
  if not self.progress or sent == rec.reported then return end
  rec.reported = sent
  callback(self, self.progress, sent, total)
end

-- Poll record rec: true once its outcome is stored in rec (rec.res is a
-- receipt, or nil with rec.err).
local function poll(self, rec)
  if rec.done then return true end
  local r, a, b, c = self.e:result(rec.slot)
  if r == false then
    report(self, rec, a, b)
    return false
  end
  -- delivered: progress reaches its end first (sent and total come after
  -- the receipt)
  if r then report(self, rec, b, c) end
  rec.done, rec.res, rec.err = true, r, a
  return true
end

-- A callback raised, or closed the connection: messages whose last octet
-- already went out are finished (their outcome matters: a retry would
-- send them twice); anything else is given up, the connection closed.
-- Returns true when driving may go on.
local function after_callback(self)
  if not (self.cb_new or self.close_requested) then return true end
  local cb_new = self.cb_new
  self.cb_new = false
  -- every message in flight when it was raised (or just finished: its
  -- last progress) carries it, the ones given up below included
  if cb_new then
    for _, rec in ipairs(self.inflight or {}) do
      if rec.cb_err == nil then rec.cb_err = self.cb_err end
    end
  end
  for _, rec in ipairs(self.inflight or {}) do
    if not rec.done and not self.e:sent(rec.slot) then
      local why = self.cb_failed and ("a callback raised an error: " .. tostring(self.cb_err))
        or "the connection was closed by one of its callbacks"
      self.e:fail("input", why .. "; connection closed so that no partial message is delivered", false)
      drop(self)
      return false
    end
  end
  return true
end

---------------------------------------------------------------------------
-- the drive loop
---------------------------------------------------------------------------

-- Write what the engine has pending. Returns true, or nil, err, kind.
local function write_pending(self)
  local sock, e = self.sock, self.e
  if self.zero_copy then
    return e:write_to(sock)   -- C socket: from the engine's buffer, no Lua string
  end
  local data = e:pending()
  if #data == 0 then return true end
  local n, err, kind = sock:send(data)
  if not n then return nil, err, kind end
  e:consume(#data)
  return true
end

-- Read what has arrived into the engine. true, or nil, err, kind.
local function read_some(self)
  local sock, e = self.sock, self.e
  if self.zero_copy then return e:read_from(sock) end   -- C socket: no Lua string
  local got, err, kind = sock:receiveany(65536)
  if not got then return nil, err, kind end
  e:feed(got)
  return true
end

-- The body source the engine waits for: call it, hand its bytes in.
-- Returns true when it yielded bytes (progress for the deadline).
local function feed_source(self)
  local e = self.e
  local fn = e:need()
  if not fn then return true end   -- a slice of signing work was done
  if self.cb_failed then
    e:supply(false, "callbacks stopped after an earlier error")
    return false
  end
  local ok, chunk, err = pcall(fn)
  if self.closed or not self.e then return false end   -- closed from inside: nothing to feed
  e:supply(ok, chunk, err)
  return ok and type(chunk) == "string" and #chunk > 0
end

-- Drive the engine until it is idle, done, or failed, or until stop()
-- returns true. Returns true, or nil, err (the engine's fatal error).
-- Never raises for a callback: see after_callback.
local function drive(self, stop)
  local e = self.e
  local step, deadline
  local spins = 0   -- rounds in a row that moved nothing
  self.tmo_ms = nil   -- (a pooled socket's timeouts are not ours to trust)
  while true do
    if self.trace then deliver_traces(self) end
    if not after_callback(self) then
      local _, err = e:want()
      return nil, err
    end
    local r, w, t, done, body, step_id = e:want()
    if r == nil then
      deliver_traces(self)
      flush_polite(self)
      return nil, w
    end
    local t_now = now()
    if step_id ~= step then
      -- something happened (a reply, a data block): outcomes and progress
      -- can only have changed now
      if stop and stop(w) then
        if not after_callback(self) then
          local _, err = e:want()
          return nil, err
        end
        return true
      end
      step = step_id
      deadline = t_now + self.timeout
      spins = 0
    end
    if done or not (r or w or t or body) then return true end
    local sock = self.sock
    if not sock then
      return fail(self, "network", "the connection is closed", true)
    end
    local left = deadline - t_now
    if left <= 0 then
      return fail(self, "timeout", ("timeout %s%s (%s s)"):format(
        (w or body) and "" or "waiting for ", e:step_name(), tostring(self.timeout)), true)
    end
    if body then
      if feed_source(self) then
        deadline = now() + self.timeout   -- a source that yields bytes is progress
      else
        spins = spins + 1
        -- an empty read: let the host breathe, the deadline still runs
        if spins > 64 and self.pause then self.pause() end
      end
    elseif t then
      set_left(self, left)
      local ok, err, kind = handshake(sock, self.servername, self.verify)
      if not ok then
        return fail(self, tls_error(self.servername, self.port, self.timeout, err, kind))
      end
      e:tls_done()
    elseif w then
      set_left(self, left)
      local ok, err, kind = write_pending(self)
      if ok and err == "readable" then
        -- the server spoke while it should be reading the body: hear it
        local got = sock:receiveany(65536)
        if got then e:feed(got) end
      end
      if not ok then
        if err == "timeout" then
          return fail(self, "timeout", ("timeout %s (%s s)"):format(e:step_name(), tostring(self.timeout)), true)
        end
        -- the server may have said why before it closed (an early 5xx in
        -- the middle of DATA): read its last words
        do
          set_left(self, 1)
          local got = sock:receiveany(65536)
          if got then e:feed(got) end
          local r2, err2 = e:want()
          if r2 == nil then
            deliver_traces(self)
            drop(self)
            return nil, err2
          end
        end
        if kind and kind ~= "network" then return fail(self, kind, err, kind == "timeout") end
        return fail(self, "network", ("connection lost while %s: %s"):format(e:step_name(), tostring(err)), true)
      end
    elseif r then
      set_left(self, left)
      local ok, err, kind = read_some(self)
      if not ok then
        if err == "closed" then
          e:eof()
          drop(self)
          deliver_traces(self)
          local _, eerr = e:want()
          if eerr then return nil, eerr end
          return true
        elseif err == "timeout" then
          -- the next round decides: the deadline is past, or not yet
        elseif kind and kind ~= "network" then
          return fail(self, kind, err, kind == "timeout")
        else
          return fail(self, "network", ("connection lost while waiting for %s: %s")
            :format(e:step_name(), tostring(err)), true)
        end
      end
    end
  end
end

-- Run drive with the connection marked busy (re-entry refused), then
-- carry out a close that a callback asked for.
local function drive_busy(self, stop)
  self.busy = true
  local ok, err = drive(self, stop)
  self.busy = false
  return ok, err
end

-- The connection's engine failed or its socket is gone: nil, err; else false.
local function broken(self)
  local r, err = self.e:want()
  if r == nil then return nil, broken_error(err) end
  if not self.sock then return nil, broken_error(nil) end
  return false
end

-- Free the engine, close the socket, mark the object closed.
local function finish(self)
  drop(self)
  local e = self.e
  if e then
    self.e = nil
    e:close()
  end
  self.closed = true
  self.busy = false
end

-- Clear the per-send callback state; carry out a close a callback asked
-- for. Returns the callback error (or nil).
local function end_send(self)
  local cb_err = self.cb_err
  self.progress, self.inflight = nil, nil
  self.cb_failed, self.cb_new, self.cb_err = false, false, nil
  if self.close_requested then
    self.close_requested = false
    finish(self)
  end
  return cb_err
end

-- Queue msg: a record, or nil, err (input problems leave the connection
-- unharmed; a broken connection says so).
local function queue(self, msg, opts)
  if not self.sock then return broken(self) end
  local slot, err = self.e:queue(msg, opts)   -- (fails as the engine failed, if it did)
  if not slot then
    if self.e:want() == nil then
      local _, e2 = broken(self)
      return nil, e2
    end
    return nil, err
  end
  -- (the receipt carries the Message-ID: nil for a raw message, whose
  -- header fields are not read)
  return { slot = slot, reported = 0, message_id = msg:message_id() }
end

-- The outcome of a finished record as send returns it, with a callback
-- error attached when there was one.
local function outcome(rec)
  local cb_err = rec.cb_err
  if rec.res then
    rec.res.message_id = rec.message_id
    if cb_err ~= nil then rec.res.callback_error = cb_err end
    return rec.res
  end
  if cb_err ~= nil and type(rec.err) == "table" then rec.err.callback_error = cb_err end
  return nil, rec.err
end

-- conn:_send(msg, opts) -> receipt | nil, err (opts checked by mailer.smtp)
function methods:_send(msg, opts)
  check_open(self, "send")
  local rec, err = queue(self, msg, opts)
  if not rec then return nil, err end
  self.progress = opts and opts.progress
  self.inflight = { rec }
  drive_busy(self, function() return poll(self, rec) end)
  if not poll(self, rec) then   -- cannot happen: a fatal error fails it
    self.e:fail("network", "send did not complete", true)
    poll(self, rec)
  end
  local sent_whole = rec.res ~= nil or (rec.err and rec.err.kind == "smtp")
  end_send(self)
  if rec.cb_err ~= nil and not sent_whole then
    -- given up before the server had the whole message: nothing was
    -- delivered, so the callback's own error is what the caller sees
    error(rec.cb_err, 0)
  end
  return outcome(rec)
end

-- conn:_send_many(produce, opts) -> results; produce() returns a message,
-- false plus an error object, or nil at the end. The engine says how many
-- messages are worth having in flight (e:window()): three for DATA (one
-- awaiting the reply to its dot, one its 354, and the next queued, so its
-- commands go out behind the dot in the same write); more when small
-- messages can go back to back as pipelined BDAT.
-- Never raises for a callback: results.callback_error holds the first
-- error, and the messages in flight when it was raised carry it too (a
-- receipt with callback_error when the server had the whole message, else
-- {error = err}); then send_many stops: no further message is taken, so
-- their entries stay nil. An error raised by the producer stops it too.
function methods:_send_many(produce, opts)
  check_open(self, "send_many")
  local results, count, exhausted, order = {}, 0, false, {}
  local producer_err
  self.progress = opts and opts.progress
  self.inflight = order
  self.busy = true
  local window = self.e:window()
  while true do
    while not exhausted and #order < window and not self.close_requested and not self.cb_failed do
      local okp, m, merr = pcall(produce)
      if not okp then
        exhausted, producer_err = true, m
        break
      end
      if m == nil then
        exhausted = true
        break
      end
      count = count + 1
      if m == false then
        results[count] = { error = merr }
      else
        local rec, err = queue(self, m, opts)
        if rec then
          rec.index = count
          order[#order + 1] = rec
        else
          results[count] = { error = err }
        end
      end
    end
    if #order == 0 then break end
    local first = order[1]
    drive(self, function(w)
      if self.progress then
        for i = 2, #order do poll(self, order[i]) end   -- progress of the ones behind
      end
      -- with DATA, bytes the server waits for (the next body, after its
      -- 354) go out before the outcome of the first is taken and the next
      -- message queued; with back-to-back BDAT (a wider window) the window
      -- is refilled first, so that several messages share a write
      if w and window <= 3 then return false end
      return poll(self, first)
    end)
    if not poll(self, first) then
      self.e:fail("network", "send did not complete", true)
      poll(self, first)
    end
    local res, err = outcome(first)
    results[first.index] = res or { error = err }
    table.remove(order, 1)
  end
  self.busy = false
  local cb_err = end_send(self)
  if cb_err == nil then cb_err = producer_err end
  if cb_err ~= nil then results.callback_error = cb_err end
  return results
end

-- NOOP or RSET: true | nil, err
local function simple(self, cmd, fname)
  check_open(self, fname)
  local b, berr = broken(self)
  if b == nil then return nil, berr end
  self.e[cmd](self.e)
  local ok, err = drive_busy(self)
  local cb_err = end_send(self)
  if cb_err ~= nil then error(cb_err, 0) end
  if not ok then return nil, err end
  return self.e:cmd_result()
end

-- conn:noop() -> true | nil, err
function methods:noop() return simple(self, "noop", "noop") end
-- conn:reset() -> true | nil, err (RSET)
function methods:reset() return simple(self, "rset", "reset") end

-- conn:close() -> true: QUIT (best effort) and close; idempotent; never
-- raises. From inside one of the connection's own callbacks it is carried
-- out when the callback returns: a message not yet wholly sent is given
-- up (never completed on the wire), then the connection closes.
function methods:close()
  if getmetatable(self) ~= Conn then
    error("bad argument #1 to 'close' (mailer.Connection expected)", 2)
  end
  if self.closed then return true end
  if self.busy then
    self.close_requested = true
    return true
  end
  if self.sock and self.e:want() ~= nil and pcall(self.e.quit, self.e) then
    self.trace = nil   -- close never raises: QUIT is not traced to a callback
    self.e:set_trace(false)
    self.busy = true
    pcall(drive, self)
    self.busy = false
  end
  finish(self)
  return true
end
Conn.__close = methods.close
-- collected without close: free without network I/O (the C socket and the
-- engine have their own __gc; this only matters where tables have __gc)
Conn.__gc = function(self) if not self.closed then finish(self) end end

-- Engines of pooled connections, by pool name: { engine, ... } and the
-- capabilities and TLS state that go with them.
local idle = {}

-- conn:setkeepalive([timeout_ms [, pool_size]]) -> true | nil, err: RSET,
-- then the socket goes back into the cosocket pool and this object is
-- closed. A connection that cannot be reset is closed instead.
function methods:setkeepalive(timeout, size)
  check_open(self, "setkeepalive")
  if timeout ~= nil and type(timeout) ~= "number" then
    error("bad argument #1 to 'setkeepalive' (number expected, got " .. type(timeout) .. ")", 2)
  end
  if size ~= nil and type(size) ~= "number" then
    error("bad argument #2 to 'setkeepalive' (number expected, got " .. type(size) .. ")", 2)
  end
  if not self.pool then
    return nil, new_error("unsupported", "setkeepalive needs an OpenResty cosocket connection")
  end
  local ok, err = self:reset()
  if not ok then
    self:close()
    return nil, err
  end
  if not self.sock.setkeepalive then
    self:close()
    return nil, new_error("unsupported", "setkeepalive: this socket has no connection pool")
  end
  ok, err = self.sock:setkeepalive(timeout, size)
  self.sock = nil
  if not ok then
    finish(self)
    return nil, new_error("network", "setkeepalive: " .. tostring(err), true)
  end
  local list = idle[self.pool]
  if not list then
    list = { caps = self.capabilities, tls = self.tls }
    idle[self.pool] = list
  end
  list[#list + 1] = self.e
  -- the pool holds at most size sockets (30 by default): older engines
  -- belong to sockets it has closed since
  local cap = size or 30
  while #list > cap do
    list[1]:close()
    table.remove(list, 1)
  end
  self.e = nil
  self.closed = true
  return true
end

---------------------------------------------------------------------------
-- connect
---------------------------------------------------------------------------

local secret_key   -- per-process key for the pool names' credential hash

-- A hash of the credentials for the pool name (never the secret itself).
local function credential_tag(c)
  local secret = c.password or c.token
  if not secret then return "-" end
  if not secret_key then secret_key = core.random_hex(16) end
  if ngx and ngx.hmac_sha1 and ngx.encode_base64 then
    return ngx.encode_base64(ngx.hmac_sha1(secret_key, secret))
  end
  -- outside nginx (tests): no HMAC at hand; a cheap keyed mix is enough
  -- to tell two secrets apart in this process
  local h = 5381
  local s = secret_key .. secret
  for i = 1, #s do h = (h * 33 + s:byte(i)) % 4294967296 end
  return ("%08x"):format(h)
end

-- The cosocket pool name for a session.
local function pool_name(c, verify, servername)
  return table.concat({ "mailer", c.host, tostring(c.port), c.security,
    verify and "verify" or "noverify", servername, c.helo or "-",
    c.allow_plaintext_auth and "plain-ok" or "-", c.username or "-", credential_tag(c),
    table.concat(c.auth or {}, ",") }, "|")
end

-- Connect sock, with connect errors in the driver's words: true | nil, err.
local function sock_connect(self, sock, c)
  local ok, err, kind = sock:connect(c.host, c.port, self.pool and { pool = self.pool } or nil)
  if ok then return true end
  if err == "timeout" then
    return nil, new_error("timeout", ("timeout connecting to %s port %d (%s s)")
      :format(c.host, c.port, tostring(c.timeout)), true)
  end
  if kind then return nil, new_error(kind, tostring(err), kind ~= "input") end
  return nil, new_error("network", ("cannot connect to %s port %d: %s")
    :format(c.host, c.port, tostring(err)), true)
end

-- A pooled cosocket came back: take an idle engine of the same session and
-- check it with NOOP. true when the connection is usable.
local function revive(self, sock, c)
  local list = idle[self.pool]
  local e = list and list[#list]
  if not e then return false end   -- pooled before this worker reloaded its Lua code
  list[#list] = nil
  e:set_trace(c.trace ~= nil)
  self.sock, self.e, self.capabilities, self.tls = sock, e, list.caps, list.tls
  local alive = pcall(e.noop, e) and drive_busy(self) and e:cmd_result()
  end_send(self)
  if alive and self.sock then return true end
  self.sock, self.e = nil, nil
  e:close()
  return false
end

-- M.connect(c, kind, sock) -> conn | nil, err. c: options checked by
-- mailer.smtp (host, port, security, timeout, tls, helo, username,
-- password, token, auth, allow_plaintext_auth, chunking, trace); kind:
-- "c", "nginx" or "object"; sock: the socket object (or a constructor's
-- result) to use.
function M.connect(c, kind, sock)
  local tls = c.tls or {}
  local verify = tls.verify ~= false
  local servername = tls.servername or c.host
  local self = setmetatable({
    kind = kind, host = c.host, port = c.port, security = c.security, timeout = c.timeout,
    verify = verify, servername = servername, trace = c.trace,
    pause = kind == "nginx" and ngx and ngx.sleep and function() ngx.sleep(0) end or nil,
  }, Conn)
  self.id = tostring({}):match("0x%x+") or "?"
  self.closed = false
  local files = tls.cafile or tls.capath or tls.certfile or tls.keyfile
  if files and c.security ~= "none" then
    if not sock.settls then
      for _, k in ipairs { "cafile", "capath", "certfile", "keyfile" } do
        if tls[k] ~= nil then
          return nil, core.error { kind = "unsupported", field = "tls." .. k,
            message = "tls." .. k .. ": not available with a cosocket; set lua_ssl_trusted_certificate " ..
                      "(and lua_ssl_verify_depth) in nginx.conf" }
        end
      end
    end
    local ok, err, ekind = sock:settls { cafile = tls.cafile, capath = tls.capath,
                                         certfile = tls.certfile, keyfile = tls.keyfile }
    if not ok then return nil, new_error(ekind or "tls", tostring(err), false) end
  end
  if kind ~= "c" then self.pool = pool_name(c, verify, servername) end
  local ms = floor(c.timeout * 1000 + 0.5)
  -- a pooled connection is checked with NOOP; a dead one is replaced by
  -- the next one the pool has, or a new one (bounded: a pool is finite).
  -- A closed cosocket object can connect again, so one object serves.
  for _ = 1, 1000 do
    if sock.settimeouts then sock:settimeouts(ms, ms, ms) else sock:settimeout(ms) end
    local ok, err = sock_connect(self, sock, c)
    if not ok then
      finish(self)
      return nil, err
    end
    if (sock.getreusedtimes and sock:getreusedtimes() or 0) == 0 then break end
    if revive(self, sock, c) then return self end
    pcall(sock.close, sock)
  end
  self.sock = sock
  local e, eerr = core.smtp_engine {
    host = c.host, port = c.port, security = c.security, helo = c.helo, username = c.username,
    password = c.password, token = c.token, auth = c.auth, chunking = c.chunking,
    allow_plaintext_auth = c.allow_plaintext_auth, tls = { servername = tls.servername },
    trace = c.trace ~= nil,
    -- a cosocket gets the body as Lua strings: smaller pieces bound the
    -- memory of many sends in flight; the C socket writes in place
    out_block = kind ~= "c" and 32768 or nil,
  }
  if not e then
    finish(self)
    return nil, eerr
  end
  self.e = e
  self.zero_copy = e.write_to ~= nil and core.is_socket ~= nil and core.is_socket(sock)
  if c.security == "tls" then
    set_left(self, c.timeout)
    local ok, err, ekind = handshake(sock, servername, verify)
    if not ok then
      finish(self)
      local k, message, temp = tls_error(servername, c.port, c.timeout, err, ekind)
      return nil, new_error(k, message, temp)
    end
  end
  local ok, err = drive_busy(self)
  local cb_err = end_send(self)
  if cb_err ~= nil then
    finish(self)
    error(cb_err, 0)
  end
  if not ok then
    finish(self)
    return nil, err
  end
  self.capabilities = e:capabilities()
  self.tls = select(4, e:status())
  return self
end

-- The event loop the caller runs in, when mailer can wait in it: "cqueues"
-- (a coroutine a controller runs) or "copas" (a coroutine, with copas
-- loaded), else nil. Only loops already loaded are asked (mailer.socket.*
-- says what counts as inside, and whether the loop is usable here).
local function running_loop()
  for _, name in ipairs { "cqueues", "copas" } do
    if package.loaded[name] then
      local loop = require("mailer.socket." .. name)
      if loop.inside() and loop.available() then return name end
    end
  end
end
M.running_loop = running_loop

-- The socket for a `socket =` choice: kind, sock | nil, err.
function M.socket(choice)
  if choice == false then choice = "c" end   -- (older spelling of "c")
  if choice == nil then
    choice = M.available() and "nginx" or running_loop() or "c"
  end
  if choice == "c" then return "c", core.socket() end
  if choice == "nginx" then
    if not M.available() then
      return nil, new_error("unsupported",
        "socket = \"nginx\": cosockets are not available here (not inside nginx, or in a phase where they cannot yield)")
    end
    return "nginx", ngx.socket.tcp()
  end
  if choice == "copas" or choice == "cqueues" then
    local loop = require("mailer.socket." .. choice)
    local usable, why = loop.available()
    if not usable then
      return nil, new_error("unsupported", ("socket = %q: %s"):format(choice, why))
    end
    if not loop.inside() then
      return nil, new_error("unsupported", choice == "copas"
        and "socket = \"copas\": call from a copas thread (copas.addthread), or use mailer.pool"
        or "socket = \"cqueues\": call from a coroutine of a cqueues controller (cq:wrap), or use mailer.pool")
    end
    return choice, loop.socket()
  end
  if type(choice) == "table" or type(choice) == "userdata" then
    return (ngx and type(choice) == "userdata") and "nginx" or "object", choice
  end
  error("bad argument #1 to 'connect' (socket: expected \"c\", \"nginx\", \"copas\", " ..
        "\"cqueues\" or a socket object, got " .. tostring(choice) .. ")", 4)
end

return M
