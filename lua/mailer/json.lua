-- mailer.json: the small JSON reader and writer the queue keeps its
-- metadata with (so the library needs no JSON rock at run time).
--
-- encode(v) -> text: tables marked with json.array(t), or with t[1] set,
-- are arrays; other tables are objects with their keys sorted (so a file
-- written twice is the same). Strings are written as UTF-8; bytes that are
-- not UTF-8 become U+FFFD and control characters \u00XX escapes, so the
-- output is always valid JSON. Numbers: integers as such, others with 14
-- significant digits; NaN and infinities as null.
-- decode(text) -> value | nil, message: strict RFC 8259 (one value, no
-- trailing commas, no comments), nesting at most 64 deep; arrays come back
-- marked, so they are arrays again when written; null is nil.
local M = {}

local type, pairs, tostring, tonumber, setmetatable, getmetatable =
  type, pairs, tostring, tonumber, setmetatable, getmetatable
local byte, char, find, sub, format, gsub = string.byte, string.char, string.find, string.sub,
  string.format, string.gsub
local concat, sort, floor, huge = table.concat, table.sort, math.floor, math.huge

local ARRAY = { __name = "json.array" }

-- Mark t (or a new table) as an array; returns it.
function M.array(t)
  return setmetatable(t or {}, ARRAY)
end

function M.is_array(t)
  return getmetatable(t) == ARRAY or (type(t) == "table" and t[1] ~= nil)
end

local REPLACEMENT = "\239\191\189"

-- A run of octets >= 0x80 with each invalid UTF-8 sequence replaced by
-- U+FFFD (a run holds whole characters when the text is valid, since
-- every octet of a multi-octet character is >= 0x80).
local function fix_utf8(run)
  local out, i, n = {}, 1, #run
  while i <= n do
    local c = byte(run, i)
    local need, min
    if c >= 0xC2 and c <= 0xDF then need, min = 1, 0x80
    elseif c >= 0xE0 and c <= 0xEF then need, min = 2, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then need, min = 3, 0x10000
    end
    local ok = need ~= nil and i + need <= n
    if ok then
      local cp = c % (2 ^ (6 - need))
      for k = 1, need do
        local cc = byte(run, i + k)
        if cc > 0xBF then ok = false break end
        cp = cp * 64 + (cc - 0x80)
      end
      ok = ok and cp >= min and cp <= 0x10FFFF and not (cp >= 0xD800 and cp <= 0xDFFF)
    end
    if ok then
      out[#out + 1] = sub(run, i, i + need)
      i = i + need + 1
    else
      out[#out + 1] = REPLACEMENT
      i = i + 1
    end
  end
  return concat(out)
end

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function encode_string(s)
  s = gsub(s, "[\128-\255]+", fix_utf8)
  return '"' .. gsub(s, '[%c"\\]', function(c)
    return escapes[c] or format("\\u%04x", byte(c))
  end) .. '"'
end

local function encode(v, out)
  local tv = type(v)
  if tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    if v ~= v or v == huge or v == -huge then
      out[#out + 1] = "null"
    elseif v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
      out[#out + 1] = format("%d", v)
    else
      out[#out + 1] = format("%.14g", v)
    end
  elseif tv == "boolean" then
    out[#out + 1] = tostring(v)
  elseif tv == "nil" then
    out[#out + 1] = "null"
  elseif tv == "table" then
    if M.is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then error("json: object keys must be strings", 0) end
        keys[#keys + 1] = k
      end
      sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  else
    error("json: cannot encode a " .. tv, 0)
  end
end

function M.encode(v)
  local out = {}
  encode(v, out)
  return concat(out)
end

---------------------------------------------------------------------------
-- decoding
---------------------------------------------------------------------------

local MAX_DEPTH = 64

-- The UTF-8 encoding of code point cp.
local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
              0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local function fail(pos, what)
  error({ json_error = format("at byte %d: %s", pos, what) }, 0)
end

local function skip(s, pos)
  local _, e = find(s, "^[ \t\r\n]*", pos)
  return e + 1
end

local decode_value

local function decode_string(s, pos)
  local parts, i = {}, pos + 1
  while true do
    local a, b = find(s, '^[^"\\%c]+', i)
    if a then
      parts[#parts + 1] = sub(s, a, b)
      i = b + 1
    end
    local c = sub(s, i, i)
    if c == '"' then
      return concat(parts), i + 1
    elseif c == "\\" then
      local e = sub(s, i + 1, i + 1)
      local simple = ({ ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
                        n = "\n", r = "\r", t = "\t" })[e]
      if simple then
        parts[#parts + 1] = simple
        i = i + 2
      elseif e == "u" then
        local hex = sub(s, i + 2, i + 5)
        if not find(hex, "^%x%x%x%x$") then fail(i, "bad \\u escape") end
        local cp = tonumber(hex, 16)
        i = i + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local lo = sub(s, i, i + 1) == "\\u" and sub(s, i + 2, i + 5)
          local lcp = lo and find(lo, "^%x%x%x%x$") and tonumber(lo, 16)
          if not lcp or lcp < 0xDC00 or lcp > 0xDFFF then fail(i, "lone surrogate") end
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lcp - 0xDC00)
          i = i + 6
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          fail(i, "lone surrogate")
        end
        parts[#parts + 1] = utf8_char(cp)
      else
        fail(i, "bad escape")
      end
    elseif c == "" then
      fail(i, "unterminated string")
    else
      fail(i, "control character in a string")
    end
  end
end

local function decode_number(s, pos)
  local _, e = find(s, "^-?%d+", pos)
  if not e then fail(pos, "unexpected character") end
  if find(s, "^-?0%d", pos) then fail(pos, "leading zero") end
  local _, f = find(s, "^%.%d+", e + 1)
  if f then e = f end
  _, f = find(s, "^[eE][-+]?%d+", e + 1)
  if f then e = f end
  return tonumber(sub(s, pos, e)), e + 1
end

function decode_value(s, pos, depth)
  pos = skip(s, pos)
  local c = sub(s, pos, pos)
  if c == "{" or c == "[" then
    if depth >= MAX_DEPTH then fail(pos, "nested too deeply") end
    local is_obj = c == "{"
    local t = is_obj and {} or M.array()
    local close = is_obj and "}" or "]"
    pos = skip(s, pos + 1)
    if sub(s, pos, pos) == close then return t, pos + 1 end
    local n = 0
    while true do
      if is_obj then
        if sub(s, pos, pos) ~= '"' then fail(pos, "expected a string key") end
        local k
        k, pos = decode_string(s, pos)
        pos = skip(s, pos)
        if sub(s, pos, pos) ~= ":" then fail(pos, "expected ':'") end
        local v
        v, pos = decode_value(s, pos + 1, depth + 1)
        t[k] = v
      else
        n = n + 1
        t[n], pos = decode_value(s, pos, depth + 1)
      end
      pos = skip(s, pos)
      local d = sub(s, pos, pos)
      if d == close then return t, pos + 1 end
      if d ~= "," then fail(pos, "expected ',' or '" .. close .. "'") end
      pos = skip(s, pos + 1)
    end
  elseif c == '"' then
    return decode_string(s, pos)
  elseif find(s, "^true", pos) then
    return true, pos + 4
  elseif find(s, "^false", pos) then
    return false, pos + 5
  elseif find(s, "^null", pos) then
    return nil, pos + 4
  elseif c == "" then
    fail(pos, "unexpected end (truncated?)")
  end
  return decode_number(s, pos)
end

function M.decode(s)
  if type(s) ~= "string" then
    error("bad argument #1 to 'decode' (string expected, got " .. type(s) .. ")", 2)
  end
  local ok, v, pos = pcall(decode_value, s, 1, 0)
  if not ok then
    if type(v) == "table" and v.json_error then return nil, v.json_error end
    error(v, 0)
  end
  pos = skip(s, pos)
  if pos <= #s then return nil, format("at byte %d: unexpected text after the value", pos) end
  return v
end

return M
