-- The mailer command: `mailer send ...` and `mailer render ...`.
-- Exit codes (sysexits): 0 sent / written, 64 bad command line, 65 bad
-- message input (address, header, missing file), 69 permanent failure (the
-- server refused, TLS or authentication failed), 75 temporary failure (try
-- again later: network, timeout, 4xx), 1 anything else.
local mailer = require "mailer"

local M = {}

local EX_OK, EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 64, 65, 69, 75

-- Text from the server (replies in the trace, in errors and receipts) may
-- hold ESC and other control characters: escaped before it reaches the
-- terminal (\x1b, \r, \u009b...), so a server cannot drive it.
local esc = mailer.core.escape

local usage = [[
usage: mailer send   [options]   send the message (to ./outbox/ without --server)
       mailer render [options]   print the message instead of sending it

message:
  --from ADDR            sender (required)          --to ADDR      recipient (repeat)
  --cc ADDR / --bcc ADDR / --reply-to ADDR (repeat)  --subject TEXT
  --text TEXT | --text-file FILE (- for stdin)       --html TEXT | --html-file FILE
  --attach FILE          attachment (repeat)         --inline FILE=CID   inline image (repeat)
  --header 'Name: value' extra header (repeat)
delivery:
  --server smtp://host[:port] | smtps://host[:port]  (smtp: port 587 + STARTTLS, smtps: 465 + TLS)
  --security tls|starttls|starttls-optional|none     --user USER  (password: $MAILER_PASSWORD or a prompt)
  --auth MECH            plain, login, cram-md5, xoauth2, oauthbearer  (token: $MAILER_TOKEN)
  --cafile FILE          CA bundle for verifying the server
  --timeout SECONDS      per step (default 30)      --outbox DIR   where send writes without --server
  --trace                the SMTP transcript on stderr (secrets redacted)
  --dry-run              build and check the message, print the envelope, send nothing
exit codes: 0 ok, 64 usage, 65 bad input, 69 permanent failure, 75 temporary failure
]]

local repeatable = { to = true, cc = true, bcc = true, ["reply-to"] = true, attach = true,
  inline = true, header = true }
local valued = { from = true, subject = true, text = true, ["text-file"] = true, html = true,
  ["html-file"] = true, server = true, security = true, user = true, auth = true, cafile = true,
  timeout = true, outbox = true }
local flags = { trace = true, ["dry-run"] = true, help = true, version = true }

-- Parse argv into {command, options}; nil, message on a usage error.
function M.parse(argv)
  local o = {}
  for k in pairs(repeatable) do o[k] = {} end
  local cmd = argv[1]
  local i = 2
  if cmd == "-h" or cmd == "--help" then return "help", o end
  if cmd == "--version" then return "version", o end
  if cmd ~= "send" and cmd ~= "render" then
    return nil, cmd and ("unknown command '" .. cmd .. "'") or "a command is required"
  end
  while i <= #argv do
    local a = argv[i]
    local name, inline_value = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if a == "-h" then name = "help" end
    if not name then return nil, "unexpected argument '" .. a .. "'" end
    if flags[name] then
      if inline_value then return nil, "--" .. name .. " takes no value" end
      o[name] = true
    elseif repeatable[name] or valued[name] then
      local v = inline_value
      if not v then
        i = i + 1
        v = argv[i]
        if v == nil then return nil, "--" .. name .. " needs a value" end
      end
      if repeatable[name] then
        table.insert(o[name], v)
      elseif o[name] ~= nil then
        return nil, "--" .. name .. " given twice"
      else
        o[name] = v
      end
    else
      return nil, "unknown option --" .. name
    end
    i = i + 1
  end
  if o.help then return "help", o end
  return cmd, o
end

local function read_file(path, what)
  local f, err
  if path == "-" then
    f = io.stdin
  else
    f, err = io.open(path, "rb")
    if not f then return nil, what .. ": " .. err end
  end
  local s = f:read("*a")
  if f ~= io.stdin then f:close() end
  return s
end

-- Parse smtp[s]://host[:port] into a server table.
local function parse_server(url)
  local scheme, rest = url:match("^(smtps?)://(.+)$")
  if not scheme then return nil, "--server must look like smtp://host[:port] or smtps://host[:port]" end
  rest = rest:gsub("/$", "")
  local host, port = rest:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = rest:match("^([^:/]+):?(%d*)$") end
  if not host or host == "" then return nil, "--server: no host in '" .. url .. "'" end
  port = tonumber(port ~= "" and port or nil)
  if port and (port < 1 or port > 65535) then return nil, "--server: bad port" end
  return { host = host, port = port or (scheme == "smtps" and 465 or 587),
           security = scheme == "smtps" and "tls" or "starttls" }
end

-- Whether a file descriptor (0, 1, 2) is a terminal.
local function isatty(fd)
  local ok = os.execute("test -t " .. fd)
  return ok == true or ok == 0
end

-- Ask for a password on the terminal with echo off.
local function prompt_password(user)
  local tty = io.open("/dev/tty", "r+")
  if not tty then return nil end
  tty:write("Password for ", user, ": ")
  tty:flush()
  os.execute("stty -echo < /dev/tty 2>/dev/null")
  local pw = tty:read("*l")
  os.execute("stty echo < /dev/tty 2>/dev/null")
  tty:write("\n")
  tty:close()
  return pw
end

-- Build the message table from the options.
local function message_table(o)
  local t = { from = o.from, subject = o.subject, attachments = {}, inline = {}, headers = {} }
  if #o.to > 0 then t.to = o.to end
  if #o.cc > 0 then t.cc = o.cc end
  if #o.bcc > 0 then t.bcc = o.bcc end
  if #o["reply-to"] > 0 then t.reply_to = o["reply-to"] end
  if o.text and o["text-file"] then return nil, "give --text or --text-file, not both" end
  if o.html and o["html-file"] then return nil, "give --html or --html-file, not both" end
  local err
  t.text = o.text
  if o["text-file"] then
    t.text, err = read_file(o["text-file"], "--text-file")
    if not t.text then return nil, err end
  end
  t.html = o.html
  if o["html-file"] then
    t.html, err = read_file(o["html-file"], "--html-file")
    if not t.html then return nil, err end
  end
  for _, path in ipairs(o.attach) do t.attachments[#t.attachments + 1] = { path = path } end
  for _, spec in ipairs(o.inline) do
    local path, cid = spec:match("^(.+)=([^=]+)$")
    if not path then return nil, "--inline needs FILE=CID, got '" .. spec .. "'" end
    t.inline[#t.inline + 1] = { path = path, cid = cid }
  end
  for i, h in ipairs(o.header) do
    local name, value = h:match("^([^:]+):%s?(.*)$")
    if not name then return nil, "--header needs 'Name: value', got '" .. h .. "'" end
    t.headers[i] = { name, value }
  end
  return t
end

local function human(n)
  if n >= 1048576 then return string.format("%.1f MiB", n / 1048576) end
  if n >= 1024 then return string.format("%.1f KiB", n / 1024) end
  return n .. " B"
end

-- A progress bar on stderr: bytes, total, rate, ETA.
local function progress_bar(stderr, clock)
  local t0, last = clock(), -1
  return function(sent, total)
    local now = clock()
    if now - last < 0.1 and sent < total then return end
    last = now
    local dt = math.max(now - t0, 1e-6)
    local rate = sent / dt
    local frac = total > 0 and math.min(sent / total, 1) or 1
    local width = 30
    local fill = math.floor(frac * width + 0.5)
    local eta = rate > 0 and (total - sent) / rate or 0
    stderr:write(string.format("\r[%s%s] %s / %s  %s/s  ETA %ds ", string.rep("#", fill),
      string.rep(" ", width - fill), human(sent), human(total), human(rate), math.ceil(eta)))
    if sent >= total then stderr:write("\n") end
    stderr:flush()
  end
end

local function fail(io_err, code, msg)
  io_err:write("mailer: ", esc(msg), "\n")
  return code
end

-- The exit code for an error object.
local function exit_code(err)
  if err.kind == "input" then return EX_DATAERR end
  if err.temporary then return EX_TEMPFAIL end
  return EX_UNAVAILABLE
end

-- Run the command; returns the exit code. env gives getenv/stdout/stderr/
-- clock/isatty for tests; defaults are the real ones.
function M.main(argv, env)
  env = env or {}
  local getenv = env.getenv or os.getenv
  local stdout, stderr = env.stdout or io.stdout, env.stderr or io.stderr
  local cmd, o = M.parse(argv)
  if not cmd then
    stderr:write("mailer: ", o, "\n", usage)
    return EX_USAGE
  end
  if cmd == "help" then stdout:write(usage) return EX_OK end
  if cmd == "version" then stdout:write("mailer ", mailer._VERSION, "\n") return EX_OK end
  if not o.from then return fail(stderr, EX_USAGE, "--from is required") end
  local t, terr = message_table(o)
  if not t then return fail(stderr, EX_USAGE, terr) end
  local msg, err = mailer.message(t)
  if not msg then return fail(stderr, exit_code(err), tostring(err)) end

  if cmd == "render" then
    local ok, e = pcall(function()
      for chunk in msg:chunks() do stdout:write(chunk) end
    end)
    if not ok then return fail(stderr, mailer.core.is_error(e) and exit_code(e) or 1, tostring(e)) end
    return EX_OK
  end

  local from, rcpts = msg:envelope()
  if o["dry-run"] then
    stdout:write("from: ", from, "\n", "to: ", table.concat(rcpts, ", "), "\n",
      "size: ", tostring(msg:size() or "unknown"), " bytes\n", "message-id: ", msg:header("Message-ID"), "\n")
    return EX_OK
  end

  if not o.server then
    local receipt, e = mailer.send(msg, { outbox = o.outbox or "outbox" })
    if not receipt then return fail(stderr, exit_code(e), tostring(e)) end
    stdout:write(receipt.path, "\n")
    return EX_OK
  end

  local server, serr = parse_server(o.server)
  if not server then return fail(stderr, EX_USAGE, serr) end
  if o.security then server.security = o.security end
  if o.timeout then
    server.timeout = tonumber(o.timeout)
    if not server.timeout or not (server.timeout > 0 and server.timeout <= 86400) then
      return fail(stderr, EX_USAGE, "--timeout needs a number of seconds over 0, at most 86400 (a day)")
    end
  end
  if o.cafile then server.tls = { cafile = o.cafile } end
  if o.auth then server.auth = o.auth end
  if o.user then
    server.username = o.user
    local token = getenv("MAILER_TOKEN")
    if token and o.auth and (o.auth:lower() == "xoauth2" or o.auth:lower() == "oauthbearer") then
      server.token = token
    else
      server.password = getenv("MAILER_PASSWORD")
      if not server.password then
        if (env.isatty or isatty)(0) then server.password = prompt_password(o.user) end
        if not server.password then
          return fail(stderr, EX_USAGE, "--user needs a password: set MAILER_PASSWORD")
        end
      end
    end
  end
  if o.trace then
    server.trace = function(dir, line) stderr:write(dir, ": ", esc(line), "\n") end
  end
  local send_opts = {}
  local size = msg:size()
  if size and size > 1048576 and (env.isatty or isatty)(2) then
    local ok, socket = pcall(require, "socket")
    send_opts.progress = progress_bar(stderr, env.clock or (ok and socket.gettime) or os.time)
  end
  local receipt, e = mailer.send(msg, server, send_opts)
  if not receipt then return fail(stderr, exit_code(e), tostring(e)) end
  for _, r in ipairs(receipt.rejected or {}) do
    stderr:write("mailer: rejected ", esc(r.address), ": ", tostring(r.code or ""), " ",
      esc(tostring(r.enhanced or "")), " ", esc(tostring(r.message or "")), "\n")
  end
  stdout:write("sent to ", esc(table.concat(receipt.accepted, ", ")), ": ",
    tostring(receipt.code or ""), " ", esc(tostring(receipt.message or "")), "\n")
  return EX_OK
end

return M
