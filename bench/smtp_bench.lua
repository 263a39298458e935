-- SMTP client benchmarks (run through bench/smtp.sh).
-- lua5.4 bench/smtp_bench.lua CLIENT WORKLOAD PORT ARG
--   CLIENT: mailer-many | mailer-many-data (chunking = false) | mailer-send |
--           luasocket | luasocket-nodelay
--   WORKLOAD: W1 (COUNT messages, one connection), W2 (COUNT messages, a
--   connection each), W3 (the file ARG: mailer streams it as an attachment,
--   LuaSocket sends the pre-rendered message file ARG .. ".eml").
-- Prints "<messages> <seconds>".
local client, workload, port, arg4 = arg[1], arg[2], tonumber(arg[3]), arg[4]
local HOST = "127.0.0.1"
local RCPTS = { "r1@example.com", "r2@example.com", "r3@example.com" }
local clock = os.clock
local socket_ok, socket = pcall(require, "socket")
local now = socket_ok and socket.gettime or os.time

local text = string.rep("The quick brown fox jumps over the lazy dog. 0123456789\n", 18) -- ~1 KB

local function small_table(i)
  return { from = "bench@example.com", to = RCPTS, subject = "bench " .. i, text = text,
           message_id = "<bench" .. i .. "@example.com>", date = 1700000000 }
end

local t0 = now()
local n = 0

if client:match("^mailer") then
  local mailer = require "mailer"
  local copts = { host = HOST, port = port, security = "none", helo = "bench.example.com", timeout = 60 }
  if client == "mailer-many-data" then   -- DATA even where CHUNKING is offered
    copts.chunking = false
    client = "mailer-many"
  end
  if workload == "W1" then
    local count = tonumber(arg4)
    local msgs = {}
    for i = 1, count do msgs[i] = assert(mailer.message(small_table(i))) end
    t0 = now()
    local conn = assert(mailer.connect(copts))
    if client == "mailer-many" then
      local res = conn:send_many(msgs)
      for i = 1, count do assert(res[i].code == 250, tostring(res[i].error)) end
    else
      for i = 1, count do assert(conn:send(msgs[i])) end
    end
    conn:close()
    n = count
  elseif workload == "W2" then
    local count = tonumber(arg4)
    local msgs = {}
    for i = 1, count do msgs[i] = assert(mailer.message(small_table(i))) end
    t0 = now()
    for i = 1, count do assert(mailer.send(msgs[i], copts)) end
    n = count
  else -- W3
    local msg = assert(mailer.message { from = "bench@example.com", to = RCPTS, subject = "big",
      text = "see attachment", attachments = { { path = arg4, filename = "big.bin" } },
      message_id = "<big@example.com>", date = 1700000000 })
    local conn = assert(mailer.connect(copts))
    assert(conn:send(msg))
    conn:close()
    n = 1
  end
else
  local smtp = require "socket.smtp"
  local ltn12 = require "ltn12"
  local create = socket.tcp
  if client == "luasocket-nodelay" then
    create = function()
      local s = socket.tcp()
      local proxy = setmetatable({}, { __index = function(_, k)
        local v = s[k]
        if type(v) == "function" then return function(_, ...) return v(s, ...) end end
        return v
      end })
      function proxy.connect(_, ...)
        local ok, e = s:connect(...)
        if ok then s:setoption("tcp-nodelay", true) end
        return ok, e
      end
      return proxy
    end
  end
  local rcpt = {}
  for i, r in ipairs(RCPTS) do rcpt[i] = "<" .. r .. ">" end
  if workload == "W1" or workload == "W2" then
    local mailer = require "mailer"
    local count = tonumber(arg4)
    local raws = {}
    for i = 1, count do raws[i] = assert(assert(mailer.message(small_table(i))):render()) end
    t0 = now()
    if workload == "W1" then
      local s = assert(smtp.open(HOST, port, create))
      s:greet("bench.example.com")
      for i = 1, count do
        s:send { from = "<bench@example.com>", rcpt = rcpt, source = ltn12.source.string(raws[i]) }
      end
      s:quit()
      s:close()
    else
      for i = 1, count do
        assert(smtp.send { server = HOST, port = port, from = "<bench@example.com>", rcpt = rcpt,
          domain = "bench.example.com", create = create, source = ltn12.source.string(raws[i]) })
      end
    end
    n = count
  else
    local f = assert(io.open(arg4 .. ".eml", "rb"))
    assert(smtp.send { server = HOST, port = port, from = "<bench@example.com>", rcpt = rcpt,
      domain = "bench.example.com", create = create, source = ltn12.source.file(f) })
    n = 1
  end
end
print(n, now() - t0)
