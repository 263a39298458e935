-- The ways the behaviour specs connect, so that one spec body runs over
-- each: the C transport (mailer.connect as it is) and the cosocket driver
-- (mailer.resty over support.cosocket, a LuaSocket stand-in for
-- ngx.socket.tcp). With a cosocket, tls.cafile cannot be given per
-- connection (nginx has lua_ssl_trusted_certificate instead): here it
-- becomes the stand-in socket's trust store.
--
--   for _, tr in ipairs(require("support.transports").list()) do
--     describe("... (" .. tr.name .. ")", function() ... tr.connect(opts) ... end)
--   end
-- MAILER_TRANSPORTS=c or =cosocket (or "c,cosocket") picks.
local mailer = require "mailer"
local cosocket = require "support.cosocket"

local M = {}

local function copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end

M.c = { name = "C transport", key = "c" }
function M.c.connect(opts) return mailer.connect(opts) end
function M.c.send(msg, server, opts) return mailer.send(msg, server, opts) end

M.cosocket = { name = "cosocket driver", key = "cosocket" }
-- opts for mailer.connect with a stand-in cosocket
function M.cosocket.options(opts)
  local o = copy(opts)
  local tls = opts.tls and copy(opts.tls)
  local cafile = tls and tls.cafile
  if tls then tls.cafile = nil end
  o.tls = tls
  o.socket = cosocket.tcp { cafile = cafile }
  return o
end
function M.cosocket.connect(opts) return mailer.connect(M.cosocket.options(opts)) end
function M.cosocket.send(msg, server, opts)
  if server.outbox then return mailer.send(msg, server, opts) end
  return mailer.send(msg, M.cosocket.options(server), opts)
end

function M.list()
  local only = os.getenv("MAILER_TRANSPORTS")
  local want
  if only and only ~= "" then
    want = {}
    for w in only:gmatch("[^,%s]+") do want[w] = true end
  end
  local out = {}
  for _, tr in ipairs { M.c, M.cosocket } do
    if not want or want[tr.key] then out[#out + 1] = tr end
  end
  return out
end

return M
