-- Render a message with a big file attachment through msg:chunks() and
-- report bytes, wall time and throughput (peak RSS comes from the caller's
-- /usr/bin/time -v). Usage: lua5.4 bench/render.lua FILE [chunk_size]
local mailer = require "mailer"
local socket_ok, socket = pcall(require, "socket")
local now = socket_ok and socket.gettime or os.clock

local path, size = arg[1], tonumber(arg[2] or "") or 65536
local msg = assert(mailer.message {
  from = "bench@example.com", to = "sink@example.com", subject = "render bench",
  text = "see attachment", attachments = { { path = path } },
})
local t0, total = now(), 0
for chunk in msg:chunks(size) do
  total = total + #chunk
end
local dt = now() - t0
assert(total == msg:size(), "size mismatch")
print(string.format("render: %d bytes in %.3f s = %.1f MiB/s (chunk %d)", total, dt,
  total / dt / 1048576, size))
