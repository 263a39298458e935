-- mailer.smtp: sending over SMTP (API.md "Sending").
--
-- Checks the options of mailer.connect / conn:send / conn:send_many (wrong
-- types raise, bad values return nil, err) in this one place, then hands
-- them to the one driver (mailer.driver), which runs the C engine over the
-- socket that `socket =` picks; the public send / send_many are added here
-- to the driver's methods over its raw _send / _send_many.
local core = require "mailer.core"
local driver = require "mailer.driver"

local type, pairs, ipairs, error, tostring, select = type, pairs, ipairs, error, tostring, select
local floor = math.floor

local M = {}
local methods = driver.methods

-- An error object of kind "input" (returned, not raised).
local function input_error(field, message)
  return nil, core.error { kind = "input", field = field, message = field .. ": " .. message }
end

-- Raise a "bad argument" error for option `name` of function `fname`.
local function bad_option(fname, name, expected, got)
  error(("bad argument #1 to '%s' (%s: %s expected, got %s)"):format(fname, name, expected, type(got)), 4)
end

-- Check that opts[name] has one of the given types (or is nil).
local function check_type(fname, opts, name, ...)
  local v = opts[name]
  if v == nil then return end
  local t = type(v)
  for i = 1, select("#", ...) do
    if t == select(i, ...) then return end
  end
  bad_option(fname, name, table.concat({ ... }, " or "), v)
end

-- The longest timeout per step, in seconds: a day. Longer ones (math.huge
-- for "never") are refused rather than clamped, so that what is asked for
-- is what happens; deadlines stay far from any overflow.
local MAX_TIMEOUT = 86400

local securities = { tls = true, starttls = true, ["starttls-optional"] = true, none = true }
local mechanisms = {
  plain = "PLAIN", login = "LOGIN", ["cram-md5"] = "CRAM-MD5", ["scram-sha-256"] = "SCRAM-SHA-256",
  xoauth2 = "XOAUTH2", oauthbearer = "OAUTHBEARER",
}
local tls_fields = { verify = "boolean", cafile = "string", capath = "string", servername = "string",
                     certfile = "string", keyfile = "string" }
local connect_fields = {
  host = true, port = true, security = true, username = true, password = true, token = true,
  auth = true, helo = true, timeout = true, tls = true, allow_plaintext_auth = true, trace = true,
  socket = true, chunking = true,
}

-- Is v a mailer.Message?
local function is_message(v)
  return core.is_message(v)
end

-- mailer.connect(opts) -> conn | nil, err
function M.connect(opts)
  local F = "connect"
  if type(opts) ~= "table" then
    error("bad argument #1 to 'connect' (table expected, got " .. type(opts) .. ")", 3)
  end
  for k in pairs(opts) do
    if not connect_fields[k] then
      error("bad argument #1 to 'connect' (unknown option '" .. tostring(k) .. "')", 3)
    end
  end
  check_type(F, opts, "host", "string")
  check_type(F, opts, "port", "number")
  check_type(F, opts, "security", "string")
  check_type(F, opts, "username", "string")
  check_type(F, opts, "password", "string")
  check_type(F, opts, "token", "string", "function")
  check_type(F, opts, "auth", "string", "table")
  check_type(F, opts, "helo", "string")
  check_type(F, opts, "timeout", "number")
  check_type(F, opts, "tls", "table")
  check_type(F, opts, "allow_plaintext_auth", "boolean")
  check_type(F, opts, "trace", "function")
  check_type(F, opts, "chunking", "boolean")
  if opts.host == nil then
    error("bad argument #1 to 'connect' (host: string expected, got nil)", 3)
  end
  local sock = opts.socket
  if sock ~= nil and sock ~= false and type(sock) ~= "string" and type(sock) ~= "table" and type(sock) ~= "userdata" then
    bad_option(F, "socket", "string or cosocket", sock)
  end
  local c = {
    host = opts.host, helo = opts.helo, username = opts.username, password = opts.password,
    allow_plaintext_auth = opts.allow_plaintext_auth, trace = opts.trace,
    chunking = opts.chunking,
  }
  if opts.host == "" or opts.host:find("[%z\r\n ]") then
    return input_error("host", "not a valid host name")
  end
  local port = opts.port or 587
  if port ~= floor(port) or port < 1 or port > 65535 then
    return input_error("port", "expected an integer from 1 to 65535")
  end
  c.port = port
  local security = opts.security or (port == 465 and "tls" or "starttls")
  if not securities[security] then
    return input_error("security", "expected \"tls\", \"starttls\", \"starttls-optional\" or \"none\"")
  end
  c.security = security
  local timeout = opts.timeout or 30
  if not (timeout > 0 and timeout <= MAX_TIMEOUT) then   -- NaN fails too
    return input_error("timeout", "expected a number of seconds greater than 0 and at most 86400 (one day)")
  end
  c.timeout = timeout
  -- credentials no mechanism can carry are refused before connecting, not
  -- sent to come back as a failed AUTH
  if opts.username and opts.username:find("%c") then
    return input_error("username", "must not contain control characters (CR, LF, NUL...)")
  end
  if opts.password and opts.password:find("\0", 1, true) then
    return input_error("password", "must not contain a NUL byte (PLAIN separates its fields with NUL)")
  end
  if opts.helo and (opts.helo == "" or opts.helo:find("[%c ]")) then
    return input_error("helo", "must be a host name without spaces or control characters")
  end
  if opts.tls then
    local t = {}
    for k, v in pairs(opts.tls) do
      local want = tls_fields[k]
      if not want then
        error("bad argument #1 to 'connect' (tls: unknown option '" .. tostring(k) .. "')", 3)
      end
      if type(v) ~= want then
        error(("bad argument #1 to 'connect' (tls.%s: %s expected, got %s)"):format(k, want, type(v)), 3)
      end
      t[k] = v
    end
    c.tls = t
  end
  if opts.auth ~= nil then
    local list = type(opts.auth) == "string" and { opts.auth } or opts.auth
    local names = {}
    for i, name in ipairs(list) do
      if type(name) ~= "string" then
        error("bad argument #1 to 'connect' (auth[" .. i .. "]: string expected, got " .. type(name) .. ")", 3)
      end
      local mech = mechanisms[name:lower()]
      if not mech then
        return input_error("auth", "unknown mechanism '" .. name .. "'")
      end
      names[#names + 1] = mech
    end
    c.auth = names
  end
  local token = opts.token
  if type(token) == "function" then
    local t, terr = token()
    if type(t) ~= "string" then
      return nil, core.error { kind = "auth", field = "token",
        message = "token: the token function returned no token" .. (terr and (": " .. tostring(terr)) or "") }
    end
    token = t
  end
  if token and token:find("%c") then
    return input_error("token", "must not contain control characters (CR, LF, NUL...)")
  end
  c.token = token
  if (c.password or c.token) and not c.username then
    return input_error("username", "required with a password or token")
  end
  if c.username and not (c.password or c.token) then
    return input_error("password", "a password or token is required with a username")
  end
  local kind, s = driver.socket(sock)
  if not kind then return nil, s end
  return driver.connect(c, kind, s)
end

-- Check and copy send options; returns the copy, or nil, err.
local function send_options(fname, opts)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    error(("bad argument #2 to '%s' (table expected, got %s)"):format(fname, type(opts)), 3)
  end
  check_type(fname, opts, "envelope", "table")
  check_type(fname, opts, "progress", "function")
  check_type(fname, opts, "dsn", "table")
  check_type(fname, opts, "dkim", "table")
  local c = { progress = opts.progress }
  if opts.dkim then   -- sign with this instead of the message's own signer
    local spec, err = require("mailer").dkim_spec(opts.dkim, "dkim")
    if not spec then return nil, err end
    local signer
    signer, err = core.dkim_signer(spec)
    if not signer then return nil, err end
    c.dkim = signer
  end
  if opts.envelope then
    local env = opts.envelope
    if env.from ~= nil and type(env.from) ~= "string" then
      error(("bad argument #2 to '%s' (envelope.from: string expected, got %s)"):format(fname, type(env.from)), 3)
    end
    local to = env.to
    if type(to) == "string" then to = { to } end
    if to ~= nil and type(to) ~= "table" then
      error(("bad argument #2 to '%s' (envelope.to: string or table expected, got %s)"):format(fname, type(to)), 3)
    end
    if to then
      for i, a in ipairs(to) do
        if type(a) ~= "string" then
          error(("bad argument #2 to '%s' (envelope.to[%d]: string expected, got %s)"):format(fname, i, type(a)), 3)
        end
      end
      if #to == 0 then return input_error("envelope.to", "no recipients") end
    end
    -- the rules of message addresses (CR, LF, NUL, quoted local parts...),
    -- international domains as A-labels
    local e, eerr = require("mailer").envelope_addresses(env.from, to)
    if not e then return nil, eerr end
    c.envelope = e
  end
  if opts.dsn then
    local d = opts.dsn
    local notify = d.notify
    if type(notify) == "string" then
      local list = {}
      for v in notify:gmatch("[^,%s]+") do list[#list + 1] = v end
      notify = list
    end
    if notify ~= nil and type(notify) ~= "table" then
      error(("bad argument #2 to '%s' (dsn.notify: table expected, got %s)"):format(fname, type(notify)), 3)
    end
    local n = {}
    for i, v in ipairs(notify or {}) do
      if type(v) ~= "string" then
        error(("bad argument #2 to '%s' (dsn.notify[%d]: string expected)"):format(fname, i), 3)
      end
      v = v:upper()
      if v ~= "NEVER" and v ~= "SUCCESS" and v ~= "FAILURE" and v ~= "DELAY" then
        return input_error("dsn.notify", "expected NEVER, SUCCESS, FAILURE or DELAY")
      end
      n[#n + 1] = v
    end
    local ret = d.ret
    if ret ~= nil then
      if type(ret) ~= "string" then
        error(("bad argument #2 to '%s' (dsn.ret: string expected, got %s)"):format(fname, type(ret)), 3)
      end
      ret = ret:upper()
      if ret ~= "FULL" and ret ~= "HDRS" then return input_error("dsn.ret", "expected FULL or HDRS") end
    end
    if d.envid ~= nil and type(d.envid) ~= "string" then
      error(("bad argument #2 to '%s' (dsn.envid: string expected, got %s)"):format(fname, type(d.envid)), 3)
    end
    c.dsn = { notify = n, ret = ret, envid = d.envid }
  end
  return c
end

-- A message from a mailer.Message or a message table: msg or nil, err.
local function to_message(v)
  if is_message(v) then return v end
  if type(v) == "table" then return require("mailer").message(v) end
  return nil
end

-- conn:send(msg [, opts]) -> receipt | nil, err
function methods:send(msg, opts)
  if not is_message(msg) and type(msg) ~= "table" then
    error("bad argument #1 to 'send' (mailer.Message or table expected, got " .. type(msg) .. ")", 2)
  end
  local o, err = send_options("send", opts)
  if err then return nil, err end
  local m
  m, err = to_message(msg)
  if not m then return nil, err end
  return self:_send(m, o)
end

-- conn:send_many(list_or_iterator [, opts]) -> { receipt or {error = err}, ... }
function methods:send_many(items, opts)
  local o, err = send_options("send_many", opts)
  local nextf
  if type(items) == "table" then
    local i, n = 0, #items
    nextf = function()
      i = i + 1
      if i > n then return nil end
      return items[i]
    end
  elseif type(items) == "function" then
    nextf = items
  else
    error("bad argument #1 to 'send_many' (table or function expected, got " .. type(items) .. ")", 2)
  end
  local function produce()
    local v = nextf()
    if v == nil then return nil end
    if err then return false, err end   -- bad options: every message fails the same way
    local m, merr = to_message(v)
    if not m then
      return false, merr or core.error { kind = "input", message = "not a message: " .. type(v) }
    end
    return m
  end
  return self:_send_many(produce, o)
end

-- mailer.send(msg_or_table, server [, opts]) -> receipt | nil, err
-- (connect, send, QUIT)
function M.send(msg, server, opts)
  local conn, err = M.connect(server)
  if not conn then return nil, err end
  local receipt
  receipt, err = conn:send(msg, opts)
  conn:close()
  return receipt, err
end

return M
