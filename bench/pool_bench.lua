-- Bulk sending benchmark (run through bench/pool.sh): SESSIONS x PER
-- messages of about 1 KB from one Lua process with mailer.pool's send_all
-- (size = SESSIONS connections, PER messages each), against PORT.
-- lua5.4 bench/pool_bench.lua PORT SESSIONS PER [SOCKET]
--   SOCKET: the pool's socket = (default: picked by the pool, which is
--   copas when it can be loaded; "c" is one connection at a time)
-- Prints "<messages> <seconds>" (messages built from tables inside the
-- timed part, as a program that sends them would).
local port, sessions, per, sock = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]), arg[4]
local mailer = require "mailer"
local core = require "mailer.core"

local text = string.rep("The quick brown fox jumps over the lazy dog. 0123456789\n", 18) -- ~1 KB
local count = sessions * per

local t0 = core.monotime()
local pool = assert(mailer.pool { host = "127.0.0.1", port = port, security = "none",
  helo = "bench.example.com", timeout = 60, size = sessions, max_messages = per,
  socket = sock ~= "" and sock or nil })
local i = 0
local results = pool:send_all(function()
  i = i + 1
  if i > count then return nil end
  return { from = "bench@example.com", to = "r1@example.com", subject = "bench " .. i, text = text,
           date = 1700000000 }
end)
pool:close()
local elapsed = core.monotime() - t0
for k = 1, count do assert(results[k] and results[k].code == 250, tostring(results[k] and results[k].error)) end
io.stderr:write(("runtime %s\n"):format(tostring(pool):match("^mailer%.Pool %(%a+, (%w+)") or "?"))
print(count, elapsed)
