-- A private nginx with ngx_lua (Debian's nginx, libnginx-mod-http-lua and
-- lua-resty-core) for the cosocket specs: one worker on 127.0.0.1, a
-- prefix under the spec run's temp directory, our own nginx.conf, the
-- checkout's Lua modules and its LuaJIT build of mailer.core.
--
--   local nginx = require "support.nginx"
--   nginx.available()          -> true | false, why
--   local n = nginx.start { cafile = ca.cafile, workers = 1 }
--   n:run(code, args)          -> the value the Lua chunk `code` returned
--                                 inside a content handler (given `args`),
--                                 as decoded JSON; raises with the handler's
--                                 error; n:post(path, body) -> status, body
--   n:get(path)                -> status, body
--   n:error_log(), n:stop()    (servers.stop_all() stops it too)
--
-- The handlers are in support/nginx_app.lua. The LuaJIT module is taken
-- from build-luajit/ in the checkout (MAILER_LUAJIT_CPATH overrides).
local servers = require "support.servers"
local socket = require "socket"
local json = require "dkjson"

local M = {}

local NGINX = os.getenv("MAILER_NGINX") or "/usr/sbin/nginx"
local MODULES = "/usr/lib/nginx/modules"

local function shquote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Children must not inherit the ASan preload of the sanitizer run.
local function sh_read(cmd)
  local f = assert(io.popen("exec env -u LD_PRELOAD -u ASAN_OPTIONS /bin/sh -c " .. shquote(cmd), "r"))
  local out = f:read("*a")
  f:close()
  return out
end

local readfile, writefile = servers.readfile, servers.writefile

-- The checkout (two levels above this file).
local function root()
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or "spec/support/nginx.lua"
  local dir = path:match("^(.*)/spec/support/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    dir = sh_read("pwd"):gsub("%s+$", "") .. (dir == "." and "" or "/" .. dir)
  end
  return dir
end

local ROOT = root()
local CPATH = os.getenv("MAILER_LUAJIT_CPATH") or (ROOT .. "/build-luajit/?.so")

-- Can a private nginx with ngx_lua run here? true, or false and why.
function M.available()
  if not readfile(NGINX) then return false, NGINX .. " is not installed (Debian: nginx)" end
  if not readfile(MODULES .. "/ngx_http_lua_module.so") then
    return false, "ngx_lua is not installed (Debian: libnginx-mod-http-lua)"
  end
  if not readfile("/usr/share/lua/5.1/resty/core.lua") then
    return false, "lua-resty-core is not installed"
  end
  if not readfile((CPATH:gsub("%?", "mailer/core"))) then
    return false, "no LuaJIT build of mailer.core at " .. CPATH .. " (cmake -B build-luajit -DMAILER_LUA=luajit)"
  end
  return true
end

local Nginx = {}
Nginx.__index = Nginx

local CONF = [[
# written by spec/support/nginx.lua
${user}
worker_processes ${workers};
daemon off;
master_process on;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;
load_module ${modules}/ndk_http_module.so;
load_module ${modules}/ngx_http_lua_module.so;

events { worker_connections 512; }

http {
  access_log off;
  client_body_temp_path ${prefix}/body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  client_body_buffer_size 1m;
  client_max_body_size 8m;

  lua_package_path "${root}/lua/?.lua;${root}/spec/?.lua;;";
  lua_package_cpath "${cpath};;";
  # the trust store of every cosocket sslhandshake (the throwaway CA)
  lua_ssl_trusted_certificate ${cafile};
  lua_ssl_verify_depth 3;
  lua_socket_log_errors off;
  resolver_timeout 2s;

  init_by_lua_block { require "mailer" }

  server {
    listen 127.0.0.1:${port};
    location = /ping { content_by_lua_block { ngx.say("pong") } }
    location = /run  { content_by_lua_block { require("support.nginx_app").run() } }
    location = /phase {
      # outside a yieldable phase: mailer.connect must not pick a cosocket
      set_by_lua_block $picked { return require("support.nginx_app").picked() }
      return 200 $picked;
    }
  }
}
]]

local function is_root() return sh_read("id -u"):match("^0%s") ~= nil end

-- nginx.start{ cafile=, workers = 1, start_timeout = 10 } -> n
function M.start(opts)
  opts = opts or {}
  local port = servers.free_port()
  local prefix = servers.mkdir("nginx")
  local conf = CONF:gsub("%${(%w+)}", {
    user = is_root() and "user root;" or "",
    workers = tostring(opts.workers or 1), prefix = prefix, modules = MODULES,
    root = ROOT, cpath = CPATH, cafile = opts.cafile or servers.ca().cafile, port = tostring(port),
  })
  return M.start_conf(conf, port, { prefix = prefix, start_timeout = opts.start_timeout })
end

-- The checkout's directory, and the LUA_CPATH entry of the LuaJIT module.
M.root, M.cpath = ROOT, CPATH

-- nginx.start_conf(conf_text, port, { env = {NAME = value}, prefix = }) -> n:
-- an nginx.conf of the caller's (it must listen on 127.0.0.1:port); pid
-- (unless the text sets it), daemon off, the error log of the start (and
-- user root when root) are given on the command line, so the text needs
-- none of them.
function M.start_conf(conf, port, opts)
  opts = opts or {}
  local ok, why = M.available()
  if not ok then error("support.nginx: " .. why, 2) end
  local prefix = opts.prefix or servers.mkdir("nginx")
  writefile(prefix .. "/nginx.conf", conf)
  local globals = "daemon off;"
  if not conf:find("\npid ") then globals = globals .. " pid " .. prefix .. "/nginx.pid;" end
  if is_root() and not conf:find("\nuser ") then globals = globals .. " user root;" end
  if conf:find("\ndaemon ") then globals = "" end
  local env = ""
  for k, v in pairs(opts.env or {}) do env = env .. k .. "=" .. shquote(v) .. " " end
  -- its own process group (setsid), so that stopping it stops the workers;
  -- a watchdog ends it if this Lua process dies without stopping it
  local lua_pid = sh_read("echo $PPID"):match("%d+")
  local pid = tonumber(sh_read(("%s setsid %s -p %s -c %s -e %s %s </dev/null >%s 2>&1 & n=$!; " ..
    "(while kill -0 %s 2>/dev/null && kill -0 $n 2>/dev/null; do sleep 1; done; kill -TERM $n 2>/dev/null) " ..
    ">/dev/null 2>&1 </dev/null & echo $n")
    :format(env ~= "" and ("env " .. env) or "", NGINX, shquote(prefix), shquote(prefix .. "/nginx.conf"),
            shquote(prefix .. "/error.log"), globals ~= "" and ("-g " .. shquote(globals)) or "",
            shquote(prefix .. "/stdout"), lua_pid)):match("%d+"))
  assert(pid, "could not start nginx")
  local self = setmetatable({ pid = pid, port = port, host = "127.0.0.1", prefix = prefix,
                              kind = "nginx" }, Nginx)
  servers._register(self)
  local deadline = socket.gettime() + (opts.start_timeout or 10)
  while true do
    local c = socket.tcp()
    c:settimeout(0.2)
    local connected = c:connect("127.0.0.1", port)
    c:close()
    if connected then return self end
    if socket.gettime() > deadline or not readfile("/proc/" .. pid .. "/stat") then
      local log = (readfile(prefix .. "/error.log") or "") .. (readfile(prefix .. "/stdout") or "")
      self:stop()
      error("nginx did not start:\n" .. log:sub(-3000), 2)
    end
    socket.sleep(0.02)
  end
end

-- An HTTP/1.0 request; returns status, body (raises on a network error).
local function request(self, method, path, body, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 120)
  assert(c:connect(self.host, self.port))
  local req = ("%s %s HTTP/1.0\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s")
    :format(method, path, body and #body or 0, body or "")
  assert(c:send(req))
  local resp, err, partial = c:receive("*a")
  c:close()
  resp = resp or partial
  assert(resp and resp ~= "", "no response from nginx: " .. tostring(err))
  local status = tonumber(resp:match("^HTTP/%d%.%d (%d+)"))
  return status, resp:match("\r\n\r\n(.*)$") or ""
end

function Nginx:get(path, timeout) return request(self, "GET", path, nil, timeout) end
function Nginx:post(path, body, timeout) return request(self, "POST", path, body, timeout) end

-- n:run(code, args) -> what the chunk returned (JSON round trip)
function Nginx:run(code, args, timeout)
  local status, body = self:post("/run", json.encode({ code = code, args = args or {} }), timeout)
  local v = json.decode(body)
  if status ~= 200 or type(v) ~= "table" then
    error(("nginx /run failed (%s): %s\nerror.log:\n%s"):format(tostring(status), body,
      (self:error_log()):sub(-2000)), 2)
  end
  return v.result
end

-- The raw request (for the concurrency spec): a connected socket that has
-- sent its request; read the answer with n.finish(c).
function Nginx:start_request(path, body)
  local c = socket.tcp()
  c:settimeout(120)
  assert(c:connect(self.host, self.port))
  assert(c:send(("POST %s HTTP/1.0\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s")
    :format(path, #(body or ""), body or "")))
  return c
end

function Nginx:error_log()
  return readfile(self.prefix .. "/error.log") or ""
end

function Nginx:stop()
  servers._stop(self)
end

return M
