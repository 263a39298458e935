-- The mailer command: `mailer send ...`, `mailer render ...` and
-- `mailer queue add|list|run|retry|remove --dir DIR ...`.
-- Exit codes (sysexits): 0 sent to every recipient / written, 64 bad
-- command line, 65 bad message input (address, header, missing file), 67
-- sent to some recipients but refused for others (sendmail's EX_NOUSER:
-- sending again would reach the others twice), 69 permanent failure (the
-- server refused, TLS or authentication failed), 75 temporary failure (try
-- again later: network, timeout, 4xx), 1 anything else. `queue run` exits 0
-- when nothing failed for good (deferred entries are the queue's business),
-- 69 when an entry failed in this run, 65 when an entry cannot be read.
local mailer = require "mailer"

local M = {}

local EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 64, 65, 67, 69, 75

-- Text from the server (replies in the trace, in errors and receipts) may
-- hold ESC and other control characters: escaped before it reaches the
-- terminal (\x1b, \r, \u009b...), so a server cannot drive it.
local esc = mailer.core.escape

local usage = [[
usage: mailer send   [options]   send the message (without --server: written to ./outbox/, not sent)
       mailer render [options]   print the message instead of sending it
       mailer queue add    --dir DIR [options]      add the message to a queue (as send --queue DIR)
       mailer queue list   --dir DIR [--json]       entries: state, attempts, next attempt, last error
       mailer queue run    --dir DIR [--server ...] deliver what is due (credentials as for send)
       mailer queue retry  --dir DIR ID...          make entries due now (failed ones too)
       mailer queue remove --dir DIR ID...          delete entries
       mailer --version                             the version, and the Lua it runs on
       mailer --help                                this text

message:
  --from ADDR            sender (required)          --to ADDR      recipient (repeat for each one)
  --cc ADDR / --bcc ADDR / --reply-to ADDR (repeat)  --subject TEXT
  --text TEXT | --text-file FILE (- for stdin)       --html TEXT | --html-file FILE
  --attach FILE          attachment (repeat)         --inline FILE=CID   inline image (repeat)
  --header 'Name: value' extra header (repeat)
delivery:
  --server smtp://host[:port] | smtps://host[:port]  (smtp: port 587 + STARTTLS, smtps: 465 + TLS)
  --security tls|starttls|starttls-optional|none     --user USER  (password: $MAILER_PASSWORD or a prompt)
  --auth MECH            scram-sha-256, cram-md5, plain, login, xoauth2 or oauthbearer (token:
                         $MAILER_TOKEN); default: the strongest the server offers
  --cafile FILE          CA bundle for verifying the server
  --timeout SECONDS      per step (default 30)      --outbox DIR   where send writes without --server
  --queue DIR            add to the queue in DIR instead of sending (--server is stored, never the password)
  --max-age SECONDS      queue run: give up on entries older than this (default 432000, 5 days)
  --trace                the SMTP transcript on stderr (secrets redacted)
  --dry-run              build and check the message, print its envelope, send nothing
  (on a terminal, messages over 1 MiB get a progress bar; it counts the message as encoded
  for the wire, where base64 makes attachments a third larger)
unsafe, for a throwaway test server only:
  --allow-plaintext-auth send the password even without TLS: anyone on the path can read it
  --insecure             do not verify the server's certificate or name: anyone on the path can
                         pose as the server and read the password and the message
exit codes: 0 sent to every recipient (or written), 64 usage, 65 bad input, 67 sent to some
  recipients but refused for others (do not send it again to all), 69 permanent failure,
  75 temporary failure (try again later)
]]

local repeatable = { to = true, cc = true, bcc = true, ["reply-to"] = true, attach = true,
  inline = true, header = true }
local valued = { from = true, subject = true, text = true, ["text-file"] = true, html = true,
  ["html-file"] = true, server = true, security = true, user = true, auth = true, cafile = true,
  timeout = true, outbox = true, queue = true, dir = true, ["max-age"] = true }
local flags = { trace = true, ["dry-run"] = true, help = true, version = true, json = true,
  ["allow-plaintext-auth"] = true, insecure = true }
local queue_commands = { add = true, list = true, run = true, retry = true, remove = true }

-- Every option the command takes, sorted (the spec checks that --help
-- names each).
function M.option_names()
  local out = {}
  for _, set in ipairs { repeatable, valued, flags } do
    for k in pairs(set) do out[#out + 1] = k end
  end
  table.sort(out)
  return out
end

-- Parse argv into {command, options}; nil, message on a usage error.
-- For `queue SUB`, options.sub is SUB and options.ids the other arguments.
function M.parse(argv)
  local o = { ids = {} }
  for k in pairs(repeatable) do o[k] = {} end
  local cmd = argv[1]
  local i = 2
  if cmd == "-h" or cmd == "--help" then return "help", o end
  if cmd == "--version" then return "version", o end
  if cmd == "queue" then
    o.sub = argv[2]
    if o.sub == "-h" or o.sub == "--help" then return "help", o end
    if not queue_commands[o.sub or ""] then
      return nil, o.sub and ("unknown queue command '" .. o.sub .. "'")
        or "queue needs a command: add, list, run, retry or remove"
    end
    i = 3
  elseif cmd ~= "send" and cmd ~= "render" then
    return nil, cmd and ("unknown command '" .. cmd .. "'") or "a command is required"
  end
  while i <= #argv do
    local a = argv[i]
    local name, inline_value = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if a == "-h" then name = "help" end
    if not name and (o.sub == "retry" or o.sub == "remove") then
      table.insert(o.ids, a)
    elseif not name then return nil, "unexpected argument '" .. a .. "'" end
    if not name then   -- an id, taken above
    elseif flags[name] then
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
      local known = {}
      for _, k in ipairs(M.option_names()) do known[k] = true end
      local near = require("mailer.smtp")._nearest(name, known)
      return nil, "unknown option --" .. name .. (near and (" (did you mean --" .. near .. "?)") or "")
    end
    i = i + 1
  end
  if o.help then return "help", o end
  if cmd == "queue" then
    if not o.dir then return nil, "queue " .. o.sub .. " needs --dir DIR" end
    if (o.sub == "retry" or o.sub == "remove") and #o.ids == 0 then
      return nil, "queue " .. o.sub .. " needs the ids of the entries"
    end
  elseif o.dir then
    return nil, "--dir is for the queue commands (send takes --queue DIR)"
  end
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
    -- sent and total count the message as encoded for the wire (base64
    -- makes an attachment a third larger than its file)
    stderr:write(string.format("\r[%s%s] %s / %s on the wire  %s/s  ETA %ds ", string.rep("#", fill),
      string.rep(" ", width - fill), human(sent), human(total), human(rate), math.ceil(eta)))
    if sent >= total then stderr:write("\n") end
    stderr:flush()
  end
end

-- The server table from --server and its companions: server | nil,
-- exit code, message. Credentials (MAILER_PASSWORD, MAILER_TOKEN, a
-- prompt) only when with_secrets.
local function server_table(o, env, with_secrets)
  local getenv = env.getenv or os.getenv
  local server, serr = parse_server(o.server)
  if not server then return nil, EX_USAGE, serr end
  if o.security then server.security = o.security end
  if o.timeout then
    server.timeout = tonumber(o.timeout)
    if not server.timeout or not (server.timeout > 0 and server.timeout <= 86400) then
      return nil, EX_USAGE, "--timeout needs a number of seconds over 0, at most 86400 (a day)"
    end
  end
  if o.cafile or o.insecure then server.tls = { cafile = o.cafile, verify = not o.insecure } end
  if o["allow-plaintext-auth"] then server.allow_plaintext_auth = true end
  if o.auth then server.auth = o.auth end
  if o.user and with_secrets then
    server.username = o.user
    local token = getenv("MAILER_TOKEN")
    if token and o.auth and (o.auth:lower() == "xoauth2" or o.auth:lower() == "oauthbearer") then
      server.token = token
    else
      server.password = getenv("MAILER_PASSWORD")
      if not server.password then
        if (env.isatty or isatty)(0) then server.password = prompt_password(o.user) end
        if not server.password then
          return nil, EX_USAGE, "--user needs a password: set MAILER_PASSWORD"
        end
      end
    end
  end
  if o.trace then
    local stderr = env.stderr or io.stderr
    server.trace = function(dir, line) stderr:write(dir, ": ", esc(line), "\n") end
  end
  return server
end

local queue_main

local function fail(io_err, code, msg)
  io_err:write("mailer: ", esc(msg), "\n")
  return code
end

-- An error from sending as the command's user should read it: the Lua
-- options it names become the flags that set them, and a certificate
-- that failed verification gets the two ways out.
local function cli_words(err)
  local text = tostring(err)
  text = text:gsub('security = "([%w-]+)"', "--security %1")
             :gsub("allow_plaintext_auth = true", "--allow-plaintext-auth")
  if type(err) == "table" and err.kind == "tls" and text:find("certificate verification", 1, true) then
    text = text .. " (--cafile FILE trusts the CA that signed it; --insecure skips the check, " ..
                   "for a throwaway test server only)"
  end
  return text
end

-- A refused recipient, as a line for stderr (the server's text begins
-- with the enhanced code, when it has one).
local function refusal(r)
  local text = tostring(r.message or "")
  if r.enhanced and text:sub(1, #r.enhanced) ~= r.enhanced then text = r.enhanced .. " " .. text end
  return ("rejected %s: %s %s (%s)"):format(esc(tostring(r.address)), tostring(r.code or ""), esc(text),
    r.temporary and "temporary: a later attempt may succeed" or "permanent")
end

-- The exit code for an error object.
local function exit_code(err)
  if err.kind == "input" then return EX_DATAERR end
  if err.temporary then return EX_TEMPFAIL end
  return EX_UNAVAILABLE
end

-- An epoch time as "YYYY-MM-DD HH:MM:SSZ" (UTC).
local function utc(t)
  return t and os.date("!%Y-%m-%d %H:%M:%SZ", math.floor(t)) or "-"
end

-- One line of an error: "smtp 451 4.7.1: text".
local function error_line(e)
  local parts = { e.kind or "error" }
  if e.code then parts[#parts + 1] = tostring(e.code) end
  if e.enhanced then parts[#parts + 1] = e.enhanced end
  return table.concat(parts, " ") .. ": " .. tostring(e.message or ""):gsub("[\r\n]+", " ")
end

-- A list() record as plain JSON-able data.
local function plain_entry(e)
  local function plain_err(x)
    if not x then return nil end
    return { kind = x.kind, code = x.code, enhanced = x.enhanced, message = x.message,
             temporary = x.temporary, field = x.field, address = x.address }
  end
  local json = require "mailer.json"
  local refused = json.array()
  for i, r in ipairs(e.refused or {}) do refused[i] = plain_err(r) end
  local function arr(t)
    local a = json.array()
    for i, v in ipairs(t or {}) do a[i] = v end
    return a
  end
  return { id = e.id, state = e.state, attempts = e.attempts, next_attempt = e.next_attempt,
           created = e.created, from = e.from, to = arr(e.to), delivered = arr(e.delivered),
           refused = refused, size = e.size, server = e.server, last_error = plain_err(e.last_error),
           outcome_unknown = e.outcome_unknown or nil, corrupt = e.corrupt or nil,
           expired = e.expired }
end

-- mailer queue list|run|retry|remove --dir DIR ...
queue_main = function(o, env)
  local stdout, stderr = env.stdout or io.stdout, env.stderr or io.stderr
  local qopts = { dir = o.dir }
  local q = mailer.queue(qopts)
  if o.sub == "list" then
    local list, err = q:list()
    if not list then return fail(stderr, exit_code(err), tostring(err)) end
    if o.json then
      local json = require "mailer.json"
      local out = json.array()
      for i, e in ipairs(list) do out[i] = plain_entry(e) end
      stdout:write(json.encode(out), "\n")
      return EX_OK
    end
    for _, e in ipairs(list) do
      local state = e.state
      if e.corrupt then state = "corrupt"
      elseif e.outcome_unknown then state = state .. " (outcome unknown)"
      elseif e.expired then state = state .. " (max age)" end
      stdout:write(("%s  %s  attempts %d"):format(e.id, state, e.attempts or 0))
      if e.next_attempt then stdout:write("  next ", utc(e.next_attempt)) end
      stdout:write("\n")
      if not e.corrupt then
        stdout:write("    from ", e.from, " to ", #e.to > 0 and table.concat(e.to, ", ") or "-",
          e.server and (" via " .. e.server) or "", ", ", tostring(e.size), " octets\n")
        if #e.delivered > 0 then stdout:write("    delivered to ", table.concat(e.delivered, ", "), "\n") end
        for _, r in ipairs(e.refused) do
          stdout:write("    refused ", r.address, ": ", error_line(r), "\n")
        end
      end
      if e.last_error then stdout:write("    last error: ", error_line(e.last_error), "\n") end
    end
    return EX_OK
  elseif o.sub == "run" then
    local ropts = {}
    if o.server then
      local server, code, serr = server_table(o, env, true)
      if not server then return fail(stderr, code, serr) end
      ropts.server = server
    end
    if o["max-age"] then
      ropts.max_age = tonumber(o["max-age"])
      if not ropts.max_age or ropts.max_age < 0 then
        return fail(stderr, EX_USAGE, "--max-age needs a number of seconds")
      end
    end
    local st, err = q:run(ropts)
    if not st then return fail(stderr, exit_code(err), cli_words(err)) end
    stdout:write(("sent %d, deferred %d, failed %d"):format(st.sent, st.deferred, st.failed))
    if st.busy > 0 then stdout:write((", busy %d"):format(st.busy)) end
    if st.corrupt > 0 then stdout:write((", corrupt %d (see mailer queue list)"):format(st.corrupt)) end
    stdout:write("\n")
    for _, e in ipairs(st.errors or {}) do stderr:write("mailer: ", esc(cli_words(e)), "\n") end
    if st.failed > 0 then return EX_UNAVAILABLE end
    if st.corrupt > 0 then return EX_DATAERR end
    if st.errors then return EX_TEMPFAIL end
    return EX_OK
  end
  local code = EX_OK
  for _, id in ipairs(o.ids) do
    local ok, err = q[o.sub](q, id)
    if not ok then
      stderr:write("mailer: ", tostring(err), "\n")
      code = exit_code(err)
    end
  end
  return code
end

-- Run the command; returns the exit code. env gives getenv/stdout/stderr/
-- clock/isatty for tests; defaults are the real ones.
function M.main(argv, env)
  env = env or {}
  local stdout, stderr = env.stdout or io.stdout, env.stderr or io.stderr
  local cmd, o = M.parse(argv)
  if not cmd then
    stderr:write("mailer: ", esc(o), "\n", "Run 'mailer --help' for the commands and options.\n")
    return EX_USAGE
  end
  if cmd == "help" then stdout:write(usage) return EX_OK end
  if cmd == "version" then
    local jit = rawget(_G, "jit")
    stdout:write("mailer ", mailer._VERSION, " (", jit and jit.version or _VERSION, ")\n")
    return EX_OK
  end
  if cmd == "queue" then
    if o.sub ~= "add" then return queue_main(o, env) end
    o.queue = o.dir
  end
  if not o.from then return fail(stderr, EX_USAGE, "--from is required") end
  local t, terr = message_table(o)
  if not t then return fail(stderr, EX_USAGE, terr) end
  local msg, err = mailer.message(t)
  if not msg then
    -- "a@x, b@y" in one --to: the way to give two is to repeat the option
    local role, i = tostring(err.field):match("^([%a_]+)%[(%d+)%]$")
    local opt = role and role:gsub("_", "-")
    local given = opt and repeatable[opt] and o[opt][tonumber(i)]
    local hint = given and given:find("[,;]") and
      (" (one address per --%s: repeat --%s for each one)"):format(opt, opt) or ""
    return fail(stderr, exit_code(err), tostring(err) .. hint)
  end

  if cmd == "render" then
    local ok, e = pcall(function()
      for chunk in msg:chunks() do stdout:write(chunk) end
    end)
    if not ok then return fail(stderr, mailer.core.is_error(e) and exit_code(e) or 1, tostring(e)) end
    return EX_OK
  end

  local from, rcpts = msg:envelope()
  if o["dry-run"] then
    -- the envelope is what the server is told (Bcc included), not the headers
    stdout:write("envelope from: ", from, "\n", "envelope to:   ", table.concat(rcpts, ", "), "\n")
    if #o.bcc > 0 then
      stdout:write("               (To, Cc and Bcc: the Bcc recipients are in no header)\n")
    end
    stdout:write("size:          ", tostring(msg:size() or "unknown"), " bytes as sent\n",
      "message-id:    ", msg:header("Message-ID"), "\n", "nothing was sent (--dry-run)\n")
    return EX_OK
  end

  if o.queue then
    local server
    if o.server then
      local code, serr
      server, code, serr = server_table(o, env, false)   -- stored: never a password
      if not server then return fail(stderr, code, serr) end
      server.trace = nil
    end
    local id, e = mailer.queue { dir = o.queue, server = server }:add(msg)
    if not id then return fail(stderr, exit_code(e), tostring(e)) end
    stdout:write(id, "\n")
    return EX_OK
  end

  if not o.server then
    local receipt, e = mailer.send(msg, { outbox = o.outbox or "outbox" })
    if not receipt then return fail(stderr, exit_code(e), tostring(e)) end
    stdout:write(receipt.path, "\n")
    stderr:write("mailer: not sent: without --server the message goes into the outbox (",
      esc(receipt.path), "); to send it, give --server smtp://HOST (or smtps://HOST)\n")
    return EX_OK
  end

  local server, code, serr = server_table(o, env, true)
  if not server then return fail(stderr, code, serr) end
  local send_opts = {}
  local size = msg:size()
  if size and size > 1048576 and (env.isatty or isatty)(2) then
    local ok, socket = pcall(require, "socket")
    send_opts.progress = progress_bar(stderr, env.clock or (ok and socket.gettime) or os.time)
  end
  local receipt, e = mailer.send(msg, server, send_opts)
  if not receipt then
    for _, r in ipairs(type(e) == "table" and e.rejected or {}) do
      stderr:write("mailer: ", refusal(r), "\n")
    end
    return fail(stderr, exit_code(e), cli_words(e))
  end
  for _, r in ipairs(receipt.rejected or {}) do
    stderr:write("mailer: ", refusal(r), "\n")
  end
  stdout:write("sent to ", esc(table.concat(receipt.accepted, ", ")), ": ",
    tostring(receipt.code or ""), " ", esc(tostring(receipt.message or "")), "\n")
  local refused = #(receipt.rejected or {})
  if refused > 0 then
    -- delivered to some: a script must not simply send it again to all
    stderr:write(("mailer: sent to %d of %d recipients, refused for %d (exit %d)\n")
      :format(#receipt.accepted, #receipt.accepted + refused, refused, EX_NOUSER))
    return EX_NOUSER
  end
  return EX_OK
end

return M
