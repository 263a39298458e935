-- Queue benchmarks (run through bench/queue.sh).
-- lua5.4 bench/queue_bench.lua add DIR COUNT        q:add of COUNT small messages (fsynced)
-- lua5.4 bench/queue_bench.lua outbox DIR COUNT     the outbox writer, for comparison (no fsync)
-- lua5.4 bench/queue_bench.lua run DIR PORT         q:run of everything in DIR to 127.0.0.1:PORT
-- Prints "<messages> <seconds>".
local mailer = require "mailer"
local now = mailer.core.q_now
local what, dir = arg[1], arg[2]

local text = string.rep("The quick brown fox jumps over the lazy dog. 0123456789\n", 18) -- ~1 KB
local function small(i)
  return assert(mailer.message { from = "bench@example.com",
    to = { "r1@example.com", "r2@example.com", "r3@example.com" }, subject = "queued " .. i,
    text = text, message_id = "<queued" .. i .. "@example.com>", date = 1700000000 })
end

if what == "add" or what == "outbox" then
  local count = tonumber(arg[3])
  local msgs = {}
  for i = 1, count do msgs[i] = small(i) end
  local q = mailer.queue { dir = dir }
  local t0 = now()
  for i = 1, count do
    if what == "add" then
      assert(q:add(msgs[i]))
    else
      assert(mailer.send(msgs[i], { outbox = dir }))
    end
  end
  print(count, now() - t0)
elseif what == "run" then
  local q = mailer.queue { dir = dir, server = { host = "127.0.0.1", port = tonumber(arg[3]),
                                                 security = "none", helo = "bench.example.com" } }
  local t0 = now()
  local st = assert(q:run())
  assert(st.deferred == 0 and st.failed == 0 and st.corrupt == 0, "not all sent")
  print(st.sent, now() - t0)
else
  error("usage: queue_bench.lua add|outbox|run DIR ...")
end
