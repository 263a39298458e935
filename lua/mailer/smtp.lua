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
local floor, min, max = math.floor, math.min, math.max
local concat, sort = table.concat, table.sort
local getinfo = debug and debug.getinfo

local M = {}
local methods = driver.methods

-- An error object of kind "input" (returned, not raised).
local function input_error(field, message)
  return nil, core.error { kind = "input", field = field, message = field .. ": " .. message }
end

-- Is a chunk's source (as debug.getinfo gives it) one of mailer's own files?
local function own_source(src)
  src = src:gsub("\\", "/")
  return src:find("/mailer%.lua$") or src:find("/mailer/[%w_]+%.lua$") or src:find("^@mailer[%./]")
end

-- Raise "bad argument #argn to 'fname' (text)" where the caller's code
-- called mailer: the first level outside mailer's own files. (mailer.send
-- reaches the option checks through other functions, and tail calls count
-- as levels in Lua 5.1 but not after, so no fixed level is right.)
local function misuse(fname, argn, text)
  local msg = ("bad argument #%d to '%s' (%s)"):format(argn, fname, text)
  local level = 2
  for n = 2, getinfo and 50 or 0 do   -- (same levels as error's: 1 is this function)
    local info = getinfo(n, "S")
    if not info then break end
    if info.what ~= "C" and info.what ~= "tail" and not own_source(info.source or "") then
      level = n
      break
    end
  end
  error(msg, level)
end

-- Edit distance between a and b: insertions, deletions, substitutions and
-- swaps of two neighbours count one each.
local function distance(a, b)
  local la, lb = #a, #b
  local prev2, prev = {}, {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur, ca = { [0] = i }, a:byte(i)
    for j = 1, lb do
      local cb = b:byte(j)
      local d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca == cb and 0 or 1))
      if i > 1 and j > 1 and ca == b:byte(j - 1) and a:byte(i - 1) == cb then
        d = min(d, prev2[j - 2] + 1)
      end
      cur[j] = d
    end
    prev2, prev = prev, cur
  end
  return prev[lb]
end

-- Names other libraries (or habit) use for our options.
local aliases = {
  user = "username", login = "username", pass = "password", passwd = "password",
  server = "host", hostname = "host", secure = "security", ssl = "security", starttls = "security",
  name = "helo", ehlo = "helo", hello = "helo", verify = "tls", ca = "cafile", cert = "certfile",
  key = "keyfile", sni = "servername", debug = "trace", logger = "trace", sock = "socket",
  onprogress = "progress", on_progress = "progress",
}

-- The known option nearest to name, or nil when none is near.
local function nearest(name, known)
  if type(name) ~= "string" then return nil end
  local l = name:lower()
  if known[l] then return l end
  if aliases[l] and known[aliases[l]] then return aliases[l] end
  local best, bd
  for k in pairs(known) do
    local d = distance(l, k)
    if not bd or d < bd or (d == bd and k < best) then best, bd = k, d end
  end
  if bd and bd <= max(1, floor(#l / 3)) then return best end
  return nil
end

-- The keys of a set, sorted.
local function names_of(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  sort(out)
  return out
end

-- Raise for an option the caller gave that `known` lacks, suggesting the
-- nearest name, else listing them all. what: "" or "tls: ".
local function unknown_option(fname, argn, what, name, known)
  local hint = nearest(name, known)
  misuse(fname, argn, ("%sunknown option '%s'%s"):format(what, tostring(name),
    hint and ("; did you mean '" .. hint .. "'?") or ("; the options are " .. concat(names_of(known), ", "))))
end

-- Raise a "bad argument" error for option `name` of function `fname`.
local function bad_option(fname, argn, name, expected, got)
  misuse(fname, argn, ("%s: %s expected, got %s"):format(name, expected, type(got)))
end

-- Check that opts[name] has one of the given types (or is nil).
local function check_type(fname, argn, opts, name, ...)
  local v = opts[name]
  if v == nil then return end
  local t = type(v)
  for i = 1, select("#", ...) do
    if t == select(i, ...) then return end
  end
  bad_option(fname, argn, name, concat({ ... }, " or "), v)
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
local send_fields = { envelope = true, progress = true, dsn = true, dkim = true }
local connect_fields = {
  host = true, port = true, security = true, username = true, password = true, token = true,
  auth = true, helo = true, timeout = true, tls = true, allow_plaintext_auth = true, trace = true,
  socket = true, chunking = true,
}

-- Is v a mailer.Message?
local function is_message(v)
  return core.is_message(v)
end

-- The names of the options of connect, tls and send, and of the AUTH
-- mechanisms (sorted lists): the README's reference tables and the
-- command's help are checked against them.
M.options = { connect = names_of(connect_fields), tls = names_of(tls_fields), send = names_of(send_fields),
              auth = names_of(mechanisms) }
M._nearest = nearest   -- (for the command's own options)

-- The socket choices by name (else a cosocket-shaped object).
local socket_names = { c = true, nginx = true, copas = true, cqueues = true }

-- connect(opts, fname, argn) -> conn | nil, err: opts is argument argn of
-- the public function fname (connect, or send, which connects first), so
-- that a misuse is reported where the caller made it.
local function connect(opts, F, argn)
  if type(opts) ~= "table" then
    misuse(F, argn, "table expected, got " .. type(opts))
  end
  for k in pairs(opts) do
    if not connect_fields[k] then unknown_option(F, argn, "", k, connect_fields) end
  end
  check_type(F, argn, opts, "host", "string")
  check_type(F, argn, opts, "port", "number")
  check_type(F, argn, opts, "security", "string")
  check_type(F, argn, opts, "username", "string")
  check_type(F, argn, opts, "password", "string")
  check_type(F, argn, opts, "token", "string", "function")
  check_type(F, argn, opts, "auth", "string", "table")
  check_type(F, argn, opts, "helo", "string")
  check_type(F, argn, opts, "timeout", "number")
  check_type(F, argn, opts, "tls", "table")
  check_type(F, argn, opts, "allow_plaintext_auth", "boolean")
  check_type(F, argn, opts, "trace", "function")
  check_type(F, argn, opts, "chunking", "boolean")
  if opts.host == nil then
    misuse(F, argn, "host: string expected, got nil")
  end
  local sock = opts.socket
  if sock ~= nil and sock ~= false and type(sock) ~= "string" and type(sock) ~= "table" and type(sock) ~= "userdata" then
    bad_option(F, argn, "socket", "string or cosocket", sock)
  end
  if type(sock) == "string" and not socket_names[sock] then
    misuse(F, argn, ("socket: expected \"c\", \"nginx\", \"copas\", \"cqueues\" or a socket object, got %q"):format(sock))
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
      if not want then unknown_option(F, argn, "tls: ", k, tls_fields) end
      if type(v) ~= want then
        misuse(F, argn, ("tls.%s: %s expected, got %s"):format(k, want, type(v)))
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
        misuse(F, argn, "auth[" .. i .. "]: string expected, got " .. type(name))
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

-- mailer.connect(opts) -> conn | nil, err
function M.connect(opts)
  return connect(opts, "connect", 1)
end

-- Check and copy the send options opts, argument argn of fname; returns
-- the copy, or nil, err.
local function send_options(fname, opts, argn)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    misuse(fname, argn, "table expected, got " .. type(opts))
  end
  for k in pairs(opts) do
    if not send_fields[k] then unknown_option(fname, argn, "", k, send_fields) end
  end
  check_type(fname, argn, opts, "envelope", "table")
  check_type(fname, argn, opts, "progress", "function")
  check_type(fname, argn, opts, "dsn", "table")
  check_type(fname, argn, opts, "dkim", "table")
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
      misuse(fname, argn, ("envelope.from: string expected, got %s"):format(type(env.from)))
    end
    local to = env.to
    if type(to) == "string" then to = { to } end
    if to ~= nil and type(to) ~= "table" then
      misuse(fname, argn, ("envelope.to: string or table expected, got %s"):format(type(to)))
    end
    if to then
      for i, a in ipairs(to) do
        if type(a) ~= "string" then
          misuse(fname, argn, ("envelope.to[%d]: string expected, got %s"):format(i, type(a)))
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
      misuse(fname, argn, ("dsn.notify: table expected, got %s"):format(type(notify)))
    end
    local n = {}
    for i, v in ipairs(notify or {}) do
      if type(v) ~= "string" then
        misuse(fname, argn, ("dsn.notify[%d]: string expected"):format(i))
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
        misuse(fname, argn, ("dsn.ret: string expected, got %s"):format(type(ret)))
      end
      ret = ret:upper()
      if ret ~= "FULL" and ret ~= "HDRS" then return input_error("dsn.ret", "expected FULL or HDRS") end
    end
    if d.envid ~= nil and type(d.envid) ~= "string" then
      misuse(fname, argn, ("dsn.envid: string expected, got %s"):format(type(d.envid)))
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
    misuse("send", 1, "mailer.Message or table expected, got " .. type(msg))
  end
  local o, err = send_options("send", opts, 2)
  if err then return nil, err end
  local m
  m, err = to_message(msg)
  if not m then return nil, err end
  return self:_send(m, o)
end

-- conn:send_many(list_or_iterator [, opts]) -> { receipt or {error = err}, ... }
function methods:send_many(items, opts)
  local o, err = send_options("send_many", opts, 2)
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
    misuse("send_many", 1, "table or function expected, got " .. type(items))
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
  -- the send options first: a mistake in them costs no connection
  local o, err = send_options("send", opts, 3)
  if err then return nil, err end
  local m
  m, err = to_message(msg)
  if not m then return nil, err end
  local conn
  conn, err = connect(server, "send", 2)
  if not conn then return nil, err end
  local receipt
  receipt, err = conn:_send(m, o)
  conn:close()
  return receipt, err
end

return M
