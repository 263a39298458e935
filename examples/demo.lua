-- The main job, end to end: build a multipart message (text, html with an
-- inline image, an attachment with a non-ASCII name) and deliver it - to
-- an SMTP server when one is given, else into ./outbox/.
--
--   lua5.4 examples/demo.lua                      -> ./outbox/<time>-<id>.eml
--   lua5.4 examples/demo.lua 127.0.0.1 2525       -> SMTP (security "none")
local mailer = require "mailer"

local host, port = arg[1], tonumber(arg[2] or "")

-- A 16x16 PNG (a red square), so the inline image is a real image.
local logo = (
  "89504e470d0a1a0a0000000d4948445200000010000000100806000000" ..
  "1ff3ff610000001c4944415478da63fccf400a60a22e8c1a306ac0a801" ..
  "a3060c6d03001f6b3f5d83fa9fd60000000049454e44ae426082"):gsub("%x%x", function(h)
    return string.char(tonumber(h, 16))
  end)

local report = {}
for i = 1, 2000 do
  report[i] = string.format("%d,Müller & Söhne,%0.2f\n", i, i * 1.25)
end

local msg = assert(mailer.message {
  from = "Mailer Demo <demo@example.com>",
  to = { "Bob Builder <bob@example.com>", { name = "Zoë Ünal", address = "zoe@example.org" } },
  subject = "Quartalsbericht Q4 – Grüße aus dem Demo 📎",
  text = "Hello Bob,\n\nthe report is attached.\n.\nA lone dot above must survive.\n",
  html = '<p>Hello Bob,</p><p>the report is attached.</p><p><img src="cid:logo" alt="logo"></p>',
  inline = { { data = logo, filename = "logo.png", cid = "logo" } },
  attachments = {
    { data = table.concat(report), filename = "Übersicht Prüfbericht – 报告 2026.csv" },
  },
  headers = { ["X-Mailer-Demo"] = "yes" },
})

local receipt, err
if host then
  receipt, err = mailer.send(msg, { host = host, port = port or 25, security = "none",
    trace = function(dir, line) io.stderr:write(dir, ": ", line, "\n") end })
else
  receipt, err = mailer.send(msg, { outbox = "outbox" })
end
if not receipt then
  io.stderr:write("demo: ", tostring(err), "\n")
  os.exit(1)
end
print(string.format("message of %d bytes, Message-ID %s", msg:size(), msg:header("Message-ID")))
print(receipt.path and ("written to " .. receipt.path) or
  ("accepted by the server for " .. table.concat(receipt.accepted, ", ") .. ": " .. tostring(receipt.message)))
