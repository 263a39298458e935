-- The OpenResty cosocket API (ngx.socket.tcp) played over LuaSocket and
-- LuaSec, blocking, so that the cosocket driver (mailer.resty) runs in
-- plain Lua under busted on every Lua version, against the same peers as
-- the C transport. It keeps ngx_lua's contract where the driver relies on
-- it: settimeouts in ms, send sends everything or fails, receiveany
-- returns what has arrived, sslhandshake(session, name, verify) verifies
-- the chain and the host name and reports like ngx_lua ("<X509 code>:
-- <text>", "certificate host mismatch"), connect{pool=} hands back parked
-- connections and getreusedtimes counts their reuse. Unlike nginx it does
-- not notice a parked connection that the peer closed: the driver's NOOP
-- check has to.
--
--   local cosocket = require "support.cosocket"
--   local sock = cosocket.tcp { cafile = ca.cafile }   -- the trust store
--   cosocket.pooled(name) -> number of parked connections; cosocket.clear()
local socket = require "socket"
local ssl = require "ssl"

local M = {}
local pools = {}   -- pool name -> { {sock=, reused=}, ... }

local S = {}
S.__index = S

-- cosocket.tcp([{cafile=}]) -> a new cosocket-like object
function M.tcp(opts)
  return setmetatable({ tc = 60000, ts = 60000, tr = 60000, cafile = opts and opts.cafile }, S)
end

function M.pooled(name)
  local n = 0
  for key, list in pairs(pools) do
    if name == nil or key == name then n = n + #list end
  end
  return n
end

function M.clear()
  for _, list in pairs(pools) do
    for _, ent in ipairs(list) do ent.sock:close() end
  end
  pools = {}
end

function S:settimeouts(c, s, r)
  self.tc, self.ts, self.tr = c, s, r
  return 1
end

function S:settimeout(ms)
  return self:settimeouts(ms, ms, ms)
end

function S:connect(host, port, opts)
  if self.sock then self:close() end
  local name = opts and opts.pool or (host .. ":" .. tostring(port))
  self.pool = name
  local list = pools[name]
  if list and #list > 0 then
    local ent = table.remove(list)
    self.sock, self.reused, self.eof, self.tls = ent.sock, ent.reused + 1, false, ent.tls
    return 1
  end
  local s = socket.tcp()
  s:settimeout(self.tc / 1000)
  local ok, err = s:connect(host, port)
  if not ok then
    s:close()
    return nil, err
  end
  self.sock, self.reused, self.eof, self.tls = s, 0, false, false
  return 1
end

function S:getreusedtimes()
  if not self.sock then return nil, "closed" end
  return self.reused
end

function S:send(data)
  local s = self.sock
  if not s then return nil, "closed" end
  s:settimeout(self.ts / 1000)
  local i = 1
  while i <= #data do
    local last, err, partial = s:send(data, i)
    if last then
      i = last + 1
    else
      if err == "wantwrite" or err == "wantread" then
        i = (partial or i - 1) + 1
      else
        return nil, err
      end
    end
  end
  return #data
end

-- What has arrived (at most max bytes), waiting up to the read timeout.
function S:receiveany(max)
  local s = self.sock
  if not s then return nil, "closed" end
  if self.eof then return nil, "closed" end
  local buffered = self.tls and s:dirty()
  if not buffered then
    local r = socket.select({ s }, nil, self.tr / 1000)
    if #r == 0 then return nil, "timeout" end
  end
  s:settimeout(0)
  local data, err, partial = s:receive(max)
  if data then return data end
  if partial and #partial > 0 then
    if err == "closed" then self.eof = true end
    return partial
  end
  if err == "timeout" or err == "wantread" or err == "wantwrite" then
    return self:receiveany(max)   -- readable but no whole TLS record yet
  end
  return nil, err
end

function S:receive(n)
  local s = self.sock
  if not s then return nil, "closed" end
  s:settimeout(self.tr / 1000)
  return s:receive(n)
end

-- X509 verification codes for LuaSec's messages (ngx_lua reports codes).
local codes = {
  { "not yet valid", 9 }, { "has expired", 10 }, { "self.signed certificate in", 19 },
  { "self.signed", 18 }, { "unable to get local issuer", 20 }, { "unable to get issuer", 2 },
}

-- Does the certificate name (a dNSName, maybe *.x) match host?
local function name_matches(pattern, host)
  pattern, host = pattern:lower(), host:lower()
  if pattern == host then return true end
  local rest = pattern:match("^%*(%..+)$")
  return rest ~= nil and host:sub(-#rest) == rest and not host:sub(1, -#rest - 1):find("%.")
    and #host > #rest
end

function S:sslhandshake(_, servername, verify)
  local s = self.sock
  if not s then return nil, "closed" end
  -- lsec_continue: finish the handshake whatever the verification says,
  -- then read the verdict (LuaSec has no error code once it aborts)
  local params = { mode = "client", protocol = "any", options = { "all", "no_sslv2", "no_sslv3" },
                   verify = verify and "peer" or "none", cafile = self.cafile,
                   verifyext = verify and { "lsec_continue" } or nil }
  if verify and not self.cafile then params.capath = "/etc/ssl/certs" end
  local t, err = ssl.wrap(s, params)
  if not t then return nil, err end
  if servername then t:sni(servername) end
  t:settimeout(self.tc / 1000)
  local ok
  ok, err = t:dohandshake()
  if not ok then
    t:close()
    self.sock = nil
    return nil, "handshake failed: " .. tostring(err)
  end
  if verify then
    local good, why = t:getpeerverification()
    if not good then
      local out = {}
      for _, list in pairs(type(why) == "table" and why or {}) do
        for _, m in ipairs(list) do out[#out + 1] = m end
      end
      local text = #out > 0 and table.concat(out, "; ") or "certificate verify failed"
      t:close()
      self.sock = nil
      for _, c in ipairs(codes) do
        if text:find(c[1]) then return nil, ("%d: %s"):format(c[2], text) end
      end
      return nil, "certificate verify failed: " .. text
    end
  end
  if verify and servername then
    local cert = t:getpeercertificate()
    local ext = cert and cert:extensions() or {}
    local san = ext["2.5.29.17"] or {}
    local found = false
    for _, n in ipairs(san.dNSName or {}) do found = found or name_matches(n, servername) end
    for _, n in ipairs(san.iPAddress or {}) do found = found or n == servername end
    if not found then
      t:close()
      self.sock = nil
      return nil, "certificate host mismatch"
    end
  end
  self.sock, self.tls = t, true
  return true
end

function S:close()
  if not self.sock then return nil, "closed" end
  self.sock:close()
  self.sock = nil
  return 1
end

function S:setkeepalive(_, size)
  if not self.sock then return nil, "closed" end
  local list = pools[self.pool]
  if not list then
    list = {}
    pools[self.pool] = list
  end
  table.insert(list, 1, { sock = self.sock, reused = self.reused, tls = self.tls })
  while #list > (size or 30) do table.remove(list).sock:close() end
  self.sock = nil
  return 1
end

return M
