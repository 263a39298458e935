-- mailer.resty: the cosocket driver. Drives the C SMTP engine
-- (core.smtp_engine: bytes in, bytes out, no sockets) over an OpenResty
-- cosocket (ngx.socket.tcp()) or any object with the same methods, so a
-- handler that sends mail yields instead of blocking its nginx worker.
--
-- mailer.smtp.connect calls M.connect with the checked options when opts
-- has socket = <cosocket>, or when it runs inside nginx in a phase where
-- cosockets work. The connection it returns has the methods of the C one
-- (send and send_many come from the same Lua code, over _send/_send_many
-- here) plus setkeepalive, which parks it in the cosocket pool.
--
-- Deadlines are per protocol step, as in the C transport: a step (the
-- greeting, the reply to RCPT, sending the body...) gets `timeout` seconds
-- in all, however the bytes trickle; each socket call gets what is left.
--
-- Pooling: the socket goes into the cosocket pool named by everything that
-- shapes a session (host, port, security, TLS verification and name, HELO,
-- user, and a keyed hash of the secret), and the engine that knows the
-- session's state goes into a list under the same name in this worker.
-- Engines under one name are interchangeable (idle, after RSET, same
-- server, same TLS and authentication), so any of them can take any
-- socket the pool hands back.
local core = require "mailer.core"

local type, ipairs, error, tostring, tonumber, pcall, select =
      type, ipairs, error, tostring, tonumber, pcall, select
local setmetatable, getmetatable = setmetatable, getmetatable
local floor = math.floor
local unpack = table.unpack or unpack
local ngx = rawget(_G, "ngx")

local M = {}

-- Seconds, with sub-second precision where the host offers it.
local now
if ngx and ngx.now then
  now = function() ngx.update_time(); return ngx.now() end
else
  local ok, socket = pcall(require, "socket")
  now = ok and socket.gettime or os.time
end

-- The phases in which cosockets can yield (ngx_lua's documentation of
-- ngx.socket.tcp); elsewhere (init, init_worker, set, log, header and body
-- filters, balancer) the C transport is used, which blocks.
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

-- The "connection is closed" error of a connection whose engine failed,
-- worded as the C transport words it.
local function broken_error(err)
  return new_error("network", "the connection is closed (after: " ..
    tostring(err and err.message or "an earlier error") .. ")", true)
end

-- Certificate verification failures as ngx_lua reports them ("<X509 code>:
-- <text>", or "certificate host mismatch"), in the words of the C transport.
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

-- kind, message, temporary for a failed sslhandshake.
local function tls_error(what, name, port, err)
  err = tostring(err)
  local code = tonumber(err:match("^(%d+): "))
  local why = code and verify_reasons[code]
  if not why and err:find("host mismatch", 1, true) then why = verify_reasons[62] end
  if not why and err:find("self[- ]signed") then why = verify_reasons[18] end
  if not why and err:find("expired", 1, true) then why = verify_reasons[10] end
  if code or why then
    return "tls", ("TLS %s with %s failed: certificate verification: %s (%s)")
      :format(what, name, why or err, err), false
  end
  if err == "timeout" then return "timeout", "timeout during the TLS handshake", true end
  return "tls", ("TLS %s with %s:%d failed: %s"):format(what, name, port, err), true
end

---------------------------------------------------------------------------
-- the connection object
---------------------------------------------------------------------------

local Conn = {}
local methods = {}
-- send and send_many check their options in mailer.smtp and call
-- self:_send / self:_send_many, which this driver provides.
setmetatable(methods, { __index = core.connection_methods })
Conn.__index = methods
Conn.__name = "mailer.Connection"

function Conn.__tostring(self)
  return ("mailer.Connection (%s, cosocket): %s"):format(self.closed and "closed" or "open",
                                                          tostring(self.id))
end

local function check_open(self)
  if type(self) ~= "table" or getmetatable(self) ~= Conn then
    error("bad argument #1 (mailer.Connection expected)", 3)
  end
  if self.closed then error("attempt to use a closed connection", 3) end
end

-- Close the socket and forget it (the engine stays, failed, to report).
local function drop(self)
  if self.sock then
    self.sock:close()
    self.sock = nil
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

-- Set every timeout of the socket to what is left of the step (ms).
local function set_left(self, left)
  local ms = floor(left * 1000 + 0.5)
  if ms < 1 then ms = 1 end
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
    sock:send(data)
  end
  drop(self)
end

-- Drive the engine until it is idle, done, or failed, or until stop()
-- returns true. Returns true, or nil, err (the engine's fatal error).
local function drive(self, stop)
  local e = self.e
  local step, deadline
  local idle_rounds = 0   -- rounds in a row that moved no byte
  while true do
    local r, w, t, done = e:want()
    if r == nil then
      flush_polite(self)
      return nil, w
    end
    if stop and stop() then return true end
    if done or not (r or w or t) then return true end
    local sock = self.sock
    if not sock then
      return fail(self, "network", "the connection is closed", true)
    end
    local _, step_name, step_id = e:status()
    if step_id ~= step then
      step = step_id
      deadline = now() + self.timeout
    end
    local left = deadline - now()
    if left <= 0 then
      return fail(self, "timeout", ("timeout %s%s (%s s)"):format(
        w and "" or "waiting for ", step_name, tostring(self.timeout)), true)
    end
    set_left(self, left)
    if t then
      local ok, err = sock:sslhandshake(nil, self.servername, self.verify)
      if not ok then
        local kind, message, temp = tls_error("handshake", self.servername, self.port, err)
        if kind == "timeout" then
          message = ("timeout during the TLS handshake (%s s)"):format(tostring(self.timeout))
        end
        return fail(self, kind, message, temp)
      end
      e:tls_done()
    else
      local data = w and e:pending() or ""
      if #data > 0 then
        local n, err = sock:send(data)
        if not n then
          if err == "timeout" then
            return fail(self, "timeout", ("timeout %s (%s s)"):format(step_name, tostring(self.timeout)), true)
          end
          return fail(self, "network", ("connection lost while %s: %s"):format(step_name, tostring(err)), true)
        end
        e:consume(#data)
        idle_rounds = 0
      elseif r then
        local got, err = sock:receiveany(65536)
        if got then
          e:feed(got)
          idle_rounds = 0
        elseif err == "closed" then
          e:eof()
          drop(self)
          local _, eerr = e:want()
          if eerr then return nil, eerr end
          return true
        elseif err == "timeout" then
          -- the next round decides: the deadline is past, or not yet
        else
          return fail(self, "network", ("connection lost while waiting for %s: %s")
            :format(step_name, tostring(err)), true)
        end
      end
      -- w with nothing pending and no read wanted: the body source failed,
      -- and want() reports it next round. An engine that keeps asking for
      -- nothing would spin the worker: never let that happen.
      if w and not r and #data == 0 then
        idle_rounds = idle_rounds + 1
        if idle_rounds > 100 then
          return fail(self, "network", "the SMTP engine wants to write but has nothing to write", false)
        end
      end
    end
  end
end

-- Run fn(...) protected; when a callback (trace, progress) raised, close
-- the connection and raise its error again, as the C binding does.
local function guarded(self, fn, ...)
  local res = { n = 0 }
  local function keep(...)
    res.n = select("#", ...)
    for i = 1, res.n do res[i] = select(i, ...) end
  end
  keep(pcall(fn, ...))
  if not res[1] then
    if self.e then
      pcall(self.e.fail, self.e, "network", "a callback raised an error; connection closed", true)
    end
    drop(self)
    error(res[2], 0)
  end
  return unpack(res, 2, res.n)
end

-- The connection's engine failed or its socket is gone: nil, err.
local function broken(self)
  local r, err = self.e:want()
  if r == nil then return nil, broken_error(err) end
  if not self.sock then return nil, broken_error(nil) end
  return false
end

-- Call progress(sent, total) when sent changed (an error in it propagates
-- to guarded()).
local function report(self, rec, sent, total)
  if not self.progress or sent == rec.reported then return end
  rec.reported = sent
  self.progress(sent, total ~= 0 and total or nil)
end

-- Poll slot rec: true once its outcome is stored in rec (rec.res is a
-- receipt, or nil with rec.err).
local function poll(self, rec)
  if rec.done then return true end
  local r, a, b = self.e:result(rec.slot)
  if r == false then
    report(self, rec, a, b)
    return false
  end
  rec.done, rec.res, rec.err = true, r, a
  return true
end

-- conn:_send(msg, opts) -> receipt | nil, err (opts checked by mailer.smtp)
function methods:_send(msg, opts)
  check_open(self)
  local b, berr = broken(self)
  if b == nil then return nil, berr end
  local slot, err = self.e:queue(msg, opts)
  if not slot then
    if self.e:want() == nil then return broken(self) end
    return nil, err   -- input problems: the connection is unharmed
  end
  local rec = { slot = slot, reported = 0 }
  self.progress = opts and opts.progress
  guarded(self, drive, self, function() return poll(self, rec) end)
  self.progress = nil
  if not poll(self, rec) then   -- cannot happen: a fatal error fails it
    self.e:fail("network", "send did not complete", true)
    poll(self, rec)
  end
  if rec.res then return rec.res end
  return nil, rec.err
end

-- conn:_send_many(produce, opts) -> results; produce() returns a message,
-- false plus an error object, or nil at the end. Two messages are in
-- flight, so the next one's commands go out behind the previous final dot.
function methods:_send_many(produce, opts)
  check_open(self)
  local results, count, exhausted, order = {}, 0, false, {}
  self.progress = opts and opts.progress
  while true do
    while not exhausted and #order < 2 do
      local okp, m, merr = pcall(produce)
      if not okp then
        -- as the C binding does: messages in flight cannot be finished
        -- any more, so the connection is given up, then the error raised
        if #order > 0 then
          self.e:fail("network", "send interrupted by an error", true)
          drop(self)
        end
        self.progress = nil
        error(m, 0)
      end
      if m == nil then
        exhausted = true
        break
      end
      count = count + 1
      if m == false then
        results[count] = { error = merr }
      else
        local b, berr = broken(self)
        if b == nil then
          results[count] = { error = berr }
        else
          local slot, err = self.e:queue(m, opts)
          if slot then
            order[#order + 1] = { slot = slot, index = count, reported = 0 }
          else
            if self.e:want() == nil then
              local _, e2 = broken(self)
              err = e2
            end
            results[count] = { error = err }
          end
        end
      end
    end
    if #order == 0 then break end
    local first = order[1]
    guarded(self, drive, self, function()
      for i = 2, #order do poll(self, order[i]) end   -- progress of the one behind
      return poll(self, first)
    end)
    if not poll(self, first) then
      self.e:fail("network", "send did not complete", true)
      poll(self, first)
    end
    results[first.index] = first.res or { error = first.err }
    table.remove(order, 1)
  end
  self.progress = nil
  return results
end

-- NOOP or RSET: true | nil, err
local function simple(self, cmd)
  check_open(self)
  local b, berr = broken(self)
  if b == nil then return nil, berr end
  self.e[cmd](self.e)
  local ok, err = guarded(self, drive, self)
  if not ok then return nil, err end
  return self.e:cmd_result()
end

-- conn:noop() -> true | nil, err
function methods:noop() return simple(self, "noop") end
-- conn:reset() -> true | nil, err (RSET)
function methods:reset() return simple(self, "rset") end

-- Free the engine and mark the object closed.
local function finish(self)
  if self.e then
    self.e:close()
    self.e = nil
  end
  self.closed = true
end

-- conn:close() -> true: QUIT (best effort) and close; idempotent; never
-- raises (a trace callback error during QUIT is ignored).
function methods:close()
  if self.closed then return true end
  if self.sock and self.e:want() ~= nil and pcall(self.e.quit, self.e) then
    pcall(drive, self)
  end
  drop(self)
  finish(self)
  return true
end
-- a cosocket is closed by nginx at the end of its request: no __gc
Conn.__close = methods.close

-- Engines of pooled connections, by pool name: { engine, ... } and the
-- capabilities and TLS state that go with them.
local idle = {}

-- conn:setkeepalive([timeout_ms [, pool_size]]) -> true | nil, err: RSET,
-- then the socket goes back into the cosocket pool and this object is
-- closed. A connection that cannot be reset is closed instead.
function methods:setkeepalive(timeout, size)
  check_open(self)
  if timeout ~= nil and type(timeout) ~= "number" then
    error("bad argument #1 to 'setkeepalive' (number expected, got " .. type(timeout) .. ")", 2)
  end
  if size ~= nil and type(size) ~= "number" then
    error("bad argument #2 to 'setkeepalive' (number expected, got " .. type(size) .. ")", 2)
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

-- M.connect(c, sock) -> conn | nil, err. c: options checked by
-- mailer.smtp (host, port, security, timeout, tls, helo, username,
-- password, token, auth, allow_plaintext_auth, trace); sock: a cosocket,
-- or nil for a new ngx.socket.tcp().
function M.connect(c, sock)
  local tls = c.tls or {}
  for _, k in ipairs { "cafile", "capath", "certfile", "keyfile" } do
    if tls[k] ~= nil then
      return nil, core.error { kind = "unsupported", field = "tls." .. k,
        message = "tls." .. k .. ": not available with a cosocket; set lua_ssl_trusted_certificate " ..
                  "(and lua_ssl_verify_depth) in nginx.conf" }
    end
  end
  local verify = tls.verify ~= false
  local servername = tls.servername or c.host
  local self = {
    host = c.host, port = c.port, security = c.security, timeout = c.timeout,
    verify = verify, servername = servername, pool = pool_name(c, verify, servername),
  }
  self.id = tostring(self):match("0x%x+") or "?"
  setmetatable(self, Conn)
  local ms = floor(c.timeout * 1000 + 0.5)
  sock = sock or ngx.socket.tcp()
  -- a pooled connection is checked with NOOP; a dead one is replaced by
  -- the next one the pool has, or a new one (bounded: a pool is finite).
  -- A closed cosocket object can connect again, so one object serves.
  for _ = 1, 1000 do
    if sock.settimeouts then sock:settimeouts(ms, ms, ms) else sock:settimeout(ms) end
    local ok, err = sock:connect(c.host, c.port, { pool = self.pool })
    if not ok then
      finish(self)
      if err == "timeout" then
        return nil, new_error("timeout", ("timeout connecting to %s port %d (%s s)")
          :format(c.host, c.port, tostring(c.timeout)), true)
      end
      return nil, new_error("network", ("cannot connect to %s port %d: %s")
        :format(c.host, c.port, tostring(err)), true)
    end
    if (sock.getreusedtimes and sock:getreusedtimes() or 0) == 0 then
      self.sock = sock
      break
    end
    local list = idle[self.pool]
    local e = list and list[#list]
    if not e then
      sock:close()   -- pooled before this worker reloaded its Lua code
    else
      list[#list] = nil
      e:set_trace(c.trace)
      self.sock, self.e, self.capabilities, self.tls = sock, e, list.caps, list.tls
      local alive = pcall(function()
        e:noop()
        assert(drive(self))
        assert(e:cmd_result())
      end)
      if alive and self.sock then return self end
      if self.sock then sock:close() end
      self.sock = nil
      e:close()
      self.e = nil
    end
  end
  if not self.sock then
    finish(self)
    return nil, new_error("network", "no usable connection from the pool", true)
  end
  local e = core.smtp_engine(c)
  self.e = e
  if c.security == "tls" then
    set_left(self, c.timeout)
    local ok, err = sock:sslhandshake(nil, servername, verify)
    if not ok then
      drop(self)
      finish(self)
      local kind, message, temp = tls_error("handshake", servername, c.port, err)
      if kind == "timeout" then
        message = ("timeout during the TLS handshake (%s s)"):format(tostring(c.timeout))
      end
      return nil, new_error(kind, message, temp)
    end
  end
  local ok, err = guarded(self, drive, self)
  if not ok then
    drop(self)
    finish(self)
    return nil, err
  end
  self.capabilities = e:capabilities()
  self.tls = select(4, e:status())
  return self
end

return M
