-- Memory per send in flight: N concurrent sends (ngx.thread) in ONE nginx
-- worker to a sink that stalls every DATA body, sampling the worker's RSS
-- while they are all blocked mid-body. Run by bench/nginx_mem.sh.
--   lua5.4 bench/nginx_mem.lua SINK_PORT N STALL_SECONDS ATTACHMENT_KIB
package.path = "spec/?.lua;" .. package.path
local nginx = require "support.nginx"
local servers = require "support.servers"

local port, n, stall, kib = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
assert(nginx.available())
local ng = nginx.start { workers = 1 }
local code = [[
local args = ...
local mailer = require "mailer"
local function rss()
  local f = io.open("/proc/self/status")
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)"))
end
local msg = assert(mailer.message { from = "a@example.com", to = "b@example.com", subject = "mem",
  text = "memory per send", attachments = { { data = string.rep("x", args.kib * 1024), filename = "a.bin" } } })
collectgarbage()
collectgarbage()
local base = rss()
local threads = {}
for i = 1, args.n do
  threads[i] = ngx.thread.spawn(function()
    return mailer.send(msg, { host = "127.0.0.1", port = args.port, security = "none", timeout = 120 })
  end)
end
local peak, t0 = base, ngx.now()
while ngx.now() - t0 < args.stall - 0.5 do
  ngx.sleep(0.25)
  local r = rss()
  if r > peak then peak = r end
end
local ok = 0
for i = 1, args.n do
  local tok, r = ngx.thread.wait(threads[i])
  if tok and r then ok = ok + 1 end
end
return { base_kib = base, peak_kib = peak, delivered = ok }
]]
local r = ng:run(code, { n = n, port = port, stall = stall, kib = kib }, 600)
print(("%d concurrent sends of a %d KiB attachment in one worker: RSS %.1f -> %.1f MiB, "
  .. "%.1f KiB per send in flight; %d delivered"):format(n, kib, r.base_kib / 1024, r.peak_kib / 1024,
  (r.peak_kib - r.base_kib) / n, r.delivered))
servers.stop_all()
