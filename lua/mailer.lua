-- mailer: build MIME messages from plain Lua tables and send them over SMTP.
--
-- This wrapper checks and normalises the message table (addresses, bodies,
-- attachments, headers), guesses content types, and hands everything to
-- the C core (mailer.core), which validates, encodes and renders. Sending
-- lives in mailer.smtp; the outbox transport (files instead of a server)
-- lives here.
local core = require "mailer.core"

local M = { _VERSION = core._VERSION, core = core }

local type, pairs, ipairs, tostring, select, next = type, pairs, ipairs, tostring, select, next
local concat, sort = table.concat, table.sort

-- An input error object for a message field.
local function input_error(field, message)
  return nil, core.error { kind = "input", field = field, message = field .. ": " .. message }
end
M.input_error = input_error

-- Content types by file extension (lower case), for attachments that do
-- not name one.
local content_types = {
  txt = "text/plain", text = "text/plain", csv = "text/csv", tsv = "text/tab-separated-values",
  html = "text/html", htm = "text/html", css = "text/css", js = "text/javascript",
  md = "text/markdown", ics = "text/calendar", vcf = "text/vcard", xml = "application/xml",
  json = "application/json", pdf = "application/pdf", rtf = "application/rtf",
  zip = "application/zip", gz = "application/gzip", tgz = "application/gzip",
  tar = "application/x-tar", bz2 = "application/x-bzip2", xz = "application/x-xz",
  ["7z"] = "application/x-7z-compressed", rar = "application/vnd.rar",
  doc = "application/msword", dot = "application/msword",
  docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  xls = "application/vnd.ms-excel",
  xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  ppt = "application/vnd.ms-powerpoint",
  pptx = "application/vnd.openxmlformats-officedocument.presentationml.presentation",
  odt = "application/vnd.oasis.opendocument.text",
  ods = "application/vnd.oasis.opendocument.spreadsheet",
  odp = "application/vnd.oasis.opendocument.presentation",
  epub = "application/epub+zip", wasm = "application/wasm",
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
  webp = "image/webp", svg = "image/svg+xml", bmp = "image/bmp", ico = "image/vnd.microsoft.icon",
  tif = "image/tiff", tiff = "image/tiff", avif = "image/avif", heic = "image/heic",
  mp3 = "audio/mpeg", wav = "audio/wav", ogg = "audio/ogg", oga = "audio/ogg", flac = "audio/flac",
  m4a = "audio/mp4", mp4 = "video/mp4", m4v = "video/mp4", webm = "video/webm",
  mov = "video/quicktime", avi = "video/x-msvideo", mkv = "video/x-matroska",
  eml = "message/rfc822", p7s = "application/pkcs7-signature", asc = "application/pgp-signature",
  sig = "application/pgp-signature", key = "application/pgp-keys",
}

-- The content type for a file name, or application/octet-stream.
function M.content_type(name)
  local ext = type(name) == "string" and name:match("%.([%w]+)$")
  return ext and content_types[ext:lower()] or "application/octet-stream"
end

-- The last component of a path (both / and \ separate).
local function basename(path)
  return path:match("([^/\\]+)$") or path
end

local function is_list(t)
  return type(t) == "table" and rawget(t, 1) ~= nil
end

-- Add the addresses of one field (string, {name=,address=}, or a list of
-- either) to the core message under a role.
local function add_addresses(m, role, field, v)
  local function one(item, f)
    if type(item) == "string" then
      return core.msg_address(m, role, item, nil, f)
    elseif type(item) == "table" and not is_list(item) then
      local addr, name = item.address, item.name
      if type(addr) ~= "string" then
        return input_error(f, "expected {name=, address=} with a string address")
      end
      if name ~= nil and type(name) ~= "string" then
        return input_error(f, "name must be a string")
      end
      return core.msg_address(m, role, addr, name or "", f)
    end
    return input_error(f, "expected an address string or {name=, address=}, got " .. type(item))
  end
  if type(v) == "table" and next(v) == nil then
    return input_error(field, "the list is empty (give at least one address, or leave " .. field .. " out)")
  end
  if is_list(v) then
    local n = #v
    for i = 1, n do
      local ok, err = one(v[i], field .. "[" .. i .. "]")
      if not ok then return nil, err end
    end
    return true
  end
  return one(v, field)
end

local known_fields = {
  from = true, sender = true, to = true, cc = true, bcc = true, reply_to = true,
  subject = true, text = true, html = true, attachments = true, inline = true,
  headers = true, date = true, message_id = true, dkim = true,
}
local part_fields = {
  path = true, data = true, source = true, filename = true, content_type = true,
  size = true, cid = true,
}

-- Check one attachment or inline spec and add it to the core message.
local function add_part(m, spec, field, inline)
  if type(spec) ~= "table" then
    return input_error(field, "expected a table, got " .. type(spec))
  end
  for k in pairs(spec) do
    if not part_fields[k] then
      return input_error(field, "unknown field '" .. tostring(k) .. "'")
    end
  end
  local n = (spec.path ~= nil and 1 or 0) + (spec.data ~= nil and 1 or 0) + (spec.source ~= nil and 1 or 0)
  if n ~= 1 then
    return input_error(field, "give exactly one of path, data or source")
  end
  if spec.path ~= nil and type(spec.path) ~= "string" then
    return input_error(field, "path must be a string")
  end
  if spec.data ~= nil and type(spec.data) ~= "string" then
    return input_error(field, "data must be a string")
  end
  if spec.source ~= nil and type(spec.source) ~= "function" then
    return input_error(field, "source must be a function returning strings, then nil")
  end
  for _, k in ipairs { "filename", "content_type", "cid" } do
    if spec[k] ~= nil and type(spec[k]) ~= "string" then
      return input_error(field, k .. " must be a string")
    end
  end
  if spec.size ~= nil and (type(spec.size) ~= "number" or spec.size < 0) then
    return input_error(field, "size must be a non-negative number")
  end
  if inline and not spec.cid then
    return input_error(field, "inline parts need a cid (referred to as cid:... in the html)")
  end
  if not inline and spec.cid then
    return input_error(field, "cid is only for inline parts")
  end
  -- mail clients strip blanks around file names; do it here so the name
  -- sent is the name shown
  local filename = spec.filename or (spec.path and basename(spec.path))
  if filename then filename = filename:match("^[ \t]*(.-)[ \t]*$") end
  local ct = spec.content_type or M.content_type(filename)
  return core.msg_part(m, {
    path = spec.path, data = spec.data, source = spec.source, size = spec.size,
    filename = filename, content_type = ct, cid = spec.cid,
  }, field)
end

-- The custom headers, as an ordered list of {name, value}: a map is sorted
-- by name (so renderings are stable); a list of pairs keeps its order.
local function header_list(h)
  local out = {}
  if is_list(h) then
    for i, pair in ipairs(h) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" or
          (type(pair[2]) ~= "string" and type(pair[2]) ~= "number") then
        return nil, "headers[" .. i .. "]"
      end
      out[#out + 1] = { pair[1], tostring(pair[2]), "headers[" .. i .. "]" }
    end
  else
    for k, v in pairs(h) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        return nil, "headers." .. tostring(k)
      end
      out[#out + 1] = { k, tostring(v), "headers." .. k }
    end
    sort(out, function(a, b) return a[1] < b[1] end)
  end
  return out
end

local dkim_fields = { domain = true, selector = true, key = true, algorithm = true,
                      canonicalization = true, headers = true }
local canons = { simple = true, relaxed = true }

-- Check a dkim table (message field or send option) and turn it into the
-- core's spec: { domain=, selector=, key=, algorithm=, header_canon=,
-- body_canon=, headers= }, or nil, err (kind "input", field "dkim.<name>").
function M.dkim_spec(d, field)
  if type(d) ~= "table" then
    return input_error(field, "expected a table {domain=, selector=, key=, ...}")
  end
  for k in pairs(d) do
    if not dkim_fields[k] then
      return input_error(field .. "." .. tostring(k), "unknown DKIM option")
    end
  end
  for _, k in ipairs { "domain", "selector", "key" } do
    if type(d[k]) ~= "string" or d[k] == "" then
      return input_error(field .. "." .. k, "required (a string)")
    end
  end
  local alg = d.algorithm
  if alg ~= nil and alg ~= "rsa-sha256" and alg ~= "ed25519-sha256" then
    return input_error(field .. ".algorithm", 'expected "rsa-sha256" or "ed25519-sha256"')
  end
  local c = d.canonicalization or "relaxed/relaxed"
  if type(c) ~= "string" then
    return input_error(field .. ".canonicalization", 'expected a string such as "relaxed/relaxed"')
  end
  local hc, bc = c:match("^(%a+)/(%a+)$")
  if not hc then hc, bc = c, "simple" end   -- RFC 6376: "c=relaxed" is relaxed/simple
  if not canons[hc] or not canons[bc] then
    return input_error(field .. ".canonicalization",
      'expected "relaxed/relaxed", "simple/simple", "relaxed/simple" or "simple/relaxed"')
  end
  local headers
  if d.headers ~= nil then
    if type(d.headers) ~= "table" or #d.headers == 0 then
      return input_error(field .. ".headers", "expected a list of header names")
    end
    headers = {}
    for i, h in ipairs(d.headers) do
      if type(h) ~= "string" then
        return input_error(field .. ".headers[" .. i .. "]", "expected a header name")
      end
      headers[i] = h
    end
  end
  return { domain = d.domain, selector = d.selector, key = d.key, algorithm = alg,
           header_canon = hc, body_canon = bc, headers = headers }
end

-- mailer.dkim_dns_record(key) -> "v=DKIM1; k=rsa; p=..." | nil, err: the
-- TXT record to publish at <selector>._domainkey.<domain> for a private
-- key (PEM text or a file path).
function M.dkim_dns_record(key)
  if type(key) ~= "string" then
    error("bad argument #1 to 'dkim_dns_record' (string expected, got " .. type(key) .. ")", 2)
  end
  local signer, err = core.dkim_signer { domain = "example.invalid", selector = "s", key = key }
  if not signer then return nil, err end
  return signer:dns_record()
end

-- mailer.message(t) -> msg | nil, err
-- Builds a message from a table (see README); a message passes through.
function M.message(t)
  if type(t) == "userdata" and tostring(t):match("^mailer%.Message") then
    return t
  end
  if type(t) ~= "table" then
    error("bad argument #1 to 'message' (table expected, got " .. type(t) .. ")", 2)
  end
  for k in pairs(t) do
    if not known_fields[k] then
      return input_error(tostring(k), "unknown message field")
    end
  end
  local dkim
  if t.dkim ~= nil then
    local derr
    dkim, derr = M.dkim_spec(t.dkim, "dkim")
    if not dkim then return nil, derr end
  end
  local m = core.new_message()
  local ok, err
  if t.from == nil then
    return input_error("from", "a sender address is required")
  end
  for _, role in ipairs { "from", "sender", "reply_to", "to", "cc", "bcc" } do
    if t[role] ~= nil then
      ok, err = add_addresses(m, role, role, t[role])
      if not ok then return nil, err end
    end
  end
  if t.subject ~= nil then
    if type(t.subject) ~= "string" then
      return input_error("subject", "expected a string, got " .. type(t.subject))
    end
    ok, err = core.msg_subject(m, t.subject)
    if not ok then return nil, err end
  end
  if t.date ~= nil then
    if type(t.date) ~= "string" and type(t.date) ~= "number" then
      return input_error("date", "expected os.time() number or an RFC 5322 string")
    end
    ok, err = core.msg_date(m, t.date)
    if not ok then return nil, err end
  end
  if t.message_id ~= nil then
    if type(t.message_id) ~= "string" then
      return input_error("message_id", "expected a string")
    end
    ok, err = core.msg_message_id(m, t.message_id)
    if not ok then return nil, err end
  end
  if t.headers ~= nil then
    if type(t.headers) ~= "table" then
      return input_error("headers", "expected a table of name = value")
    end
    local list, bad = header_list(t.headers)
    if not list then
      return input_error(bad, "header names and values must be strings")
    end
    for _, h in ipairs(list) do
      ok, err = core.msg_header(m, h[1], h[2], h[3])
      if not ok then return nil, err end
    end
  end
  for _, kind in ipairs { "text", "html" } do
    local v = t[kind]
    if v ~= nil then
      if type(v) == "table" then   -- streamed: { path = } or { source = , size = }
        for k in pairs(v) do
          if k ~= "path" and k ~= "source" and k ~= "size" then
            return input_error(kind, "unknown field '" .. tostring(k) .. "' (path, source, size)")
          end
        end
        local n = (v.path ~= nil and 1 or 0) + (v.source ~= nil and 1 or 0)
        if n ~= 1 then return input_error(kind, "give exactly one of path or source") end
        if v.path ~= nil and type(v.path) ~= "string" then
          return input_error(kind, "path must be a string")
        end
        if v.source ~= nil and type(v.source) ~= "function" then
          return input_error(kind, "source must be a function")
        end
        if v.size ~= nil and (type(v.size) ~= "number" or v.size < 0 or v.size ~= math.floor(v.size)) then
          return input_error(kind, "size must be a whole number of octets")
        end
      elseif type(v) ~= "string" then
        return input_error(kind, "expected a string, {path=} or {source=}, got " .. type(v))
      end
      ok, err = core.msg_body(m, kind, v)
      if not ok then return nil, err end
    end
  end
  for _, kind in ipairs { "inline", "attachments" } do
    local list = t[kind]
    if list ~= nil then
      if type(list) ~= "table" then
        return input_error(kind, "expected a list of tables")
      end
      if next(list) ~= nil and not is_list(list) then
        list = { list } -- a single spec given without the list around it
      end
      for i, spec in ipairs(list) do
        ok, err = add_part(m, spec, kind .. "[" .. i .. "]", kind == "inline")
        if not ok then return nil, err end
      end
    end
  end
  if dkim then
    ok, err = core.msg_dkim(m, dkim)
    if not ok then return nil, err end
  end
  return core.msg_finish(m)
end

---------------------------------------------------------------------------
-- rendering: msg:render() and msg:chunks() drive a core rendering (C never
-- calls Lua): when it needs bytes from a source function it returns that
-- function; we call it here (so it may yield wherever the caller's
-- coroutine may) and hand its result back.
---------------------------------------------------------------------------

local msg_methods = core.message_methods

-- The next piece of rendering r: bytes | nil (the end) | nil, err.
local function next_piece(r)
  while true do
    local piece, src = r:next()
    if type(piece) == "string" then return piece end
    if piece == false then
      local ok, err = r:supply(pcall(src))
      if not ok then return nil, err end
    elseif piece == nil then
      return nil, src
    end   -- true: a slice of signing work; go on
  end
end

-- msg:render() -> the whole message as a string | nil, err
function msg_methods.render(m)
  local r = core.render(m)
  local parts, n = {}, 0
  while true do
    local piece, err = next_piece(r)
    if not piece then
      if err then return nil, err end
      return concat(parts)
    end
    n = n + 1
    parts[n] = piece
  end
end

-- msg:chunks([size]) -> iterator over pieces of at most size octets (64 KiB
-- by default) of the rendered message; an error is raised, never a
-- silently short message.
function msg_methods.chunks(m, size)
  if size == nil then size = 65536 end
  if type(size) ~= "number" or size < 1 or size > 2 ^ 30 or size ~= math.floor(size) then
    error("bad argument #1 to 'chunks' (size must be an integer 1 .. 2^30)", 2)
  end
  local r = core.render(m)
  local pend, off, done = "", 1, false
  return function()
    core.msg_check(m)   -- closed between two chunks: an error, not a short message
    if done then return nil end
    local buf, have = {}, 0
    while have < size do
      if off > #pend then
        local piece, err = next_piece(r)
        if not piece then
          done = true
          if err then error(err, 0) end
          break
        end
        pend, off = piece, 1
      end
      local take = #pend - off + 1
      if take > size - have then take = size - have end
      buf[#buf + 1] = (off == 1 and take == #pend) and pend or pend:sub(off, off + take - 1)
      off = off + take
      have = have + take
    end
    if have == 0 then return nil end
    return concat(buf)
  end
end

-- mailer.raw_message(path, envelope) -> msg | nil, err: a message that is
-- the file at path, sent as is (an .eml rendered earlier: CRLF lines, as
-- msg:render() gives them); envelope = { from = "a@b", to = {...} } is its
-- SMTP envelope (the file's own headers are not read). Used by the queue.
function M.raw_message(path, envelope)
  if type(path) ~= "string" then
    error("bad argument #1 to 'raw_message' (string expected, got " .. type(path) .. ")", 2)
  end
  if type(envelope) ~= "table" then
    error("bad argument #2 to 'raw_message' (table expected, got " .. type(envelope) .. ")", 2)
  end
  local m = core.new_message()
  if type(envelope.from) ~= "string" then return input_error("envelope.from", "expected an address") end
  local ok, err = core.msg_address(m, "from", envelope.from, nil, "envelope.from")
  if not ok then return nil, err end
  local to = type(envelope.to) == "string" and { envelope.to } or envelope.to
  if type(to) ~= "table" or #to == 0 then return input_error("envelope.to", "expected addresses") end
  for i, a in ipairs(to) do
    if type(a) ~= "string" then return input_error("envelope.to[" .. i .. "]", "expected an address") end
    ok, err = core.msg_address(m, "to", a, nil, "envelope.to[" .. i .. "]")
    if not ok then return nil, err end
  end
  ok, err = core.msg_raw(m, path, "path")
  if not ok then return nil, err end
  return core.msg_finish(m)
end

-- The envelope of a send option { from =, to = } (strings; to a list) in
-- its wire form: each address checked with the rules of message addresses
-- (no CR, LF or NUL, no quoted local part that could hide SMTP parameters)
-- and an international domain written as its A-label. Returns { from =,
-- to = } (nil where not given), or nil, err (kind "input", field
-- "envelope.from" or "envelope.to[i]").
function M.envelope_addresses(from, to)
  local out = {}
  if from ~= nil then
    local why
    out.from, why = core.envelope_address(from)
    if not out.from then return input_error("envelope.from", why) end
  end
  if to ~= nil then
    out.to = {}
    for i, a in ipairs(to) do
      local field = "envelope.to[" .. i .. "]"
      if a == "" then return input_error(field, "empty recipient address") end
      local w, why = core.envelope_address(a)
      if not w then return input_error(field, why) end
      out.to[i] = w
    end
  end
  return out
end

-- Write a message into an outbox directory as <time>-<id>.eml, atomically
-- (a temporary file renamed into place), with the envelope in a .json
-- file beside it. Returns a receipt with the path.
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function write_outbox(msg, dir, opts)
  local ok, err = core.mkdir(dir)
  if not ok then
    return nil, core.error { kind = "input", field = "outbox", message = err }
  end
  local from, rcpts = msg:envelope()
  if opts and opts.envelope then
    local env = opts.envelope
    local to = type(env) == "table" and (type(env.to) == "string" and { env.to } or env.to)
    if type(env) ~= "table" or (env.from ~= nil and type(env.from) ~= "string") or
        (to ~= nil and type(to) ~= "table") then
      return input_error("envelope", "expected { from = string, to = { strings } }")
    end
    for i, a in ipairs(to or {}) do
      if type(a) ~= "string" then return input_error("envelope.to[" .. i .. "]", "expected a string") end
    end
    local e, eerr = M.envelope_addresses(env.from, to)
    if not e then return nil, eerr end
    from = e.from or from
    rcpts = e.to or rcpts
  end
  local name = os.date("!%Y%m%dT%H%M%SZ") .. "-" .. core.random_hex(8)
  local path = dir .. "/" .. name .. ".eml"
  local tmp = dir .. "/." .. name .. ".tmp"
  local f, ferr = io.open(tmp, "wb")
  if not f then
    return nil, core.error { kind = "input", field = "outbox", message = "outbox: " .. ferr }
  end
  local wok, werr = pcall(function()
    for chunk in msg:chunks() do
      assert(f:write(chunk))
    end
  end)
  f:close()
  if not wok then
    os.remove(tmp)
    if core.is_error(werr) then return nil, werr end
    return nil, core.error { kind = "input", field = "outbox", message = "outbox: " .. tostring(werr) }
  end
  local quoted = {}
  for i, r in ipairs(rcpts) do quoted[i] = json_string(r) end
  local jf = io.open(dir .. "/." .. name .. ".json.tmp", "wb")
  if jf then
    jf:write('{"from":', json_string(from or ""), ',"to":[', concat(quoted, ","), ']}\n')
    jf:close()
    os.rename(dir .. "/." .. name .. ".json.tmp", dir .. "/" .. name .. ".json")
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, core.error { kind = "input", field = "outbox", message = "outbox: " .. tostring(rerr) }
  end
  return { path = path, accepted = rcpts, rejected = {}, code = 250,
           message = "written to " .. path, message_id = msg:message_id() }
end

-- mailer.connect(opts) -> conn | nil, err (see mailer.smtp)
function M.connect(opts)
  return require("mailer.smtp").connect(opts)
end

-- mailer.queue{ dir =, server = } -> a store-and-forward queue (see mailer.queue)
function M.queue(opts)
  return require("mailer.queue").new(opts)
end

-- mailer.pool(opts) -> pool | nil, err (see mailer.pool)
function M.pool(opts)
  return require("mailer.pool").new(opts)
end

-- mailer.send(message_table_or_msg, server [, opts]) -> receipt | nil, err
-- server = { outbox = "dir" } writes an .eml file instead of sending.
function M.send(msg, server, opts)
  if type(server) ~= "table" then
    error("bad argument #2 to 'send' (table expected, got " .. type(server) .. ")", 2)
  end
  local m, err = M.message(msg)
  if not m then return nil, err end
  if server.outbox ~= nil then
    if type(server.outbox) ~= "string" or server.outbox == "" then
      return input_error("outbox", "expected a directory path")
    end
    return write_outbox(m, server.outbox, opts)
  end
  return require("mailer.smtp").send(m, server, opts)
end

return M
