-- CHUNKING / BDAT (RFC 3030): against the private Postfix (it offers
-- CHUNKING by default; what it delivered is compared with what was
-- rendered, and a DKIM signature still verifies after delivery), and
-- against a small recording BDAT server started here that checks each
-- chunk's announced size against the octets that follow it.
local mailer = require "mailer"
local servers = require "support.servers"

local PY = "env -u LD_PRELOAD -u ASAN_OPTIONS /usr/bin/python3"

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local readfile, writefile = servers.readfile, servers.writefile

local function sleep(s) require("socket").sleep(s) end

-- One connection: EHLO with CHUNKING (and PIPELINING unless told not to),
-- 250 to MAIL / RCPT / RSET, and for each "BDAT n [LAST]" reads exactly n
-- octets, records {n, last, octets seen before the next command} and
-- answers 250. Writes record.txt: one "n last" line per chunk, then data.
local RECORDER = [[
import os, socket, sys
port_file, out_dir, pipelining = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1); srv.settimeout(30)
open(port_file + ".tmp", "w").write(str(srv.getsockname()[1])); os.rename(port_file + ".tmp", port_file)
c, _ = srv.accept(); c.settimeout(30)
buf = b""
def fill():
    global buf
    d = c.recv(1 << 20)
    if not d: raise EOFError
    buf += d
def line():
    global buf
    while b"\r\n" not in buf: fill()
    l, _, buf = buf.partition(b"\r\n"); return l
def take(n):
    global buf
    while len(buf) < n: fill()
    d, buf = buf[:n], buf[n:]; return d
chunks, data = [], []
c.sendall(b"220 rec ESMTP\r\n")
try:
    while True:
        l = line(); verb = l.split(b" ")[0].upper()
        if verb == b"EHLO":
            caps = [b"rec", b"CHUNKING", b"8BITMIME"] + ([b"PIPELINING"] if pipelining else [])
            c.sendall(b"".join(b"250-" + x + b"\r\n" for x in caps[:-1]) + b"250 " + caps[-1] + b"\r\n")
        elif verb == b"BDAT":
            parts = l.split()
            n, last = int(parts[1]), len(parts) > 2 and parts[2].upper() == b"LAST"
            d = take(n); data.append(d); chunks.append((n, last))
            c.sendall(b"250 2.0.0 chunk %d ok%s\r\n" % (len(chunks), b", queued" if last else b""))
        elif verb == b"QUIT":
            c.sendall(b"221 bye\r\n"); break
        elif verb == b"DATA":
            c.sendall(b"503 use BDAT\r\n")
        else:
            c.sendall(b"250 ok\r\n")
except EOFError:
    pass
with open(os.path.join(out_dir, "chunks.txt"), "w") as f:
    for n, last in chunks: f.write("%d %d\n" % (n, 1 if last else 0))
open(os.path.join(out_dir, "data.bin"), "wb").write(b"".join(data))
open(os.path.join(out_dir, "done"), "w").write("1")
]]

local function recorder(pipelining)
  local dir = servers.mkdir("bdat-rec")
  writefile(dir .. "/rec.py", RECORDER)
  os.execute("env -u LD_PRELOAD -u ASAN_OPTIONS /usr/bin/python3 " .. sh_quote(dir .. "/rec.py") .. " " ..
             sh_quote(dir .. "/port") .. " " .. sh_quote(dir) .. " " .. (pipelining and "1" or "0") ..
             " >" .. sh_quote(dir .. "/log") .. " 2>&1 &")
  for _ = 1, 500 do
    local p = readfile(dir .. "/port")
    if p then return { dir = dir, port = tonumber(p) } end
    sleep(0.01)
  end
  error("recorder did not start: " .. tostring(readfile(dir .. "/log")))
end

local function recorded(rec)
  for _ = 1, 1000 do
    if readfile(rec.dir .. "/done") then break end
    sleep(0.01)
  end
  local chunks = {}
  for n, last in (readfile(rec.dir .. "/chunks.txt") or ""):gmatch("(%d+) (%d)\n") do
    chunks[#chunks + 1] = { n = tonumber(n), last = last == "1" }
  end
  return chunks, readfile(rec.dir .. "/data.bin")
end

local function big_message(mib, extra)
  local t = { from = "Alice Ünal <alice@example.com>", to = "user1@test.example", subject = "Grüße BDAT",
              text = ".leading dot\n.\nlast line\n",
              attachments = { { data = ("\0\1\2\3binary\r\n.\r\n"):rep(math.floor(mib * 1024 * 1024 / 16)), filename = "big.bin" } } }
  for k, v in pairs(extra or {}) do t[k] = v end
  return assert(mailer.message(t))
end

describe("BDAT", function()
  teardown(function() servers.stop_all() end)

  for _, pipelining in ipairs { true, false } do
    it("sends chunks whose sizes add up to the message (" .. (pipelining and "" or "no ") .. "PIPELINING)", function()
      local rec = recorder(pipelining)
      local lines = {}
      local conn = assert(mailer.connect { host = "127.0.0.1", port = rec.port, security = "none", timeout = 20,
                                           trace = function(d, l) if l:match("^BDAT") then lines[#lines + 1] = l end end })
      assert.is_true(conn.capabilities.CHUNKING)
      local msg = big_message(3)
      local r = assert(conn:send(msg))
      assert.matches("queued", r.message)
      conn:close()
      local chunks, data = recorded(rec)
      local total = 0
      for i, c in ipairs(chunks) do
        total = total + c.n
        assert.are.equal(i == #chunks, c.last)
      end
      assert.is_true(#chunks >= 3, "chunks: " .. #chunks)
      assert.are.equal(#chunks, #lines)
      assert.are.equal(msg:size(), total)
      assert.are.equal(msg:render(), data)   -- not dot-stuffed: ".\r\n" lines arrive as they are
    end)
  end

  it("falls back to DATA when asked to (chunking = false)", function()
    local srv = servers.aiosmtpd { extensions = { "PIPELINING", "CHUNKING" } }
    local lines = {}
    local conn = assert(mailer.connect { host = "127.0.0.1", port = srv.port, security = "none", timeout = 10,
                                         chunking = false, trace = function(d, l) lines[#lines + 1] = l end })
    assert(conn:send { from = "a@example.com", to = "b@example.com", text = ".x" })
    conn:close()
    assert.matches("\nDATA\n", "\n" .. table.concat(lines, "\n") .. "\n")
    assert.is_nil(table.concat(lines, "\n"):find("BDAT", 1, true))
  end)

  describe("against Postfix", function()
    local ok, why = servers.have_postfix()
    if not ok then
      pending("Postfix: " .. why)
      return
    end

    -- RFC 3030 with RFC 2920: small messages go back to back, each one's
    -- BDAT behind its RCPTs before any reply; the outcomes still come out
    -- per message (a refused sender, all or some recipients refused).
    it("pipelines small messages back to back and keeps each outcome", function()
      local p = servers.postfix { main = {
        smtpd_delay_reject = "no",
        smtpd_sender_restrictions = "check_sender_access inline:{refused@example.com=REJECT}",
      } }
      local d = p.domain
      local trace = {}
      local conn = assert(mailer.connect { host = "127.0.0.1", port = p.port, security = "none", timeout = 30,
                                           trace = function(dir, l) trace[#trace + 1] = dir .. " " .. l end })
      assert.is_true(conn.capabilities.CHUNKING and conn.capabilities.PIPELINING)
      local key = servers.mkdir("bdat-small-key") .. "/ed.pem"
      os.execute("env -u LD_PRELOAD openssl genpkey -algorithm ED25519 -out " .. sh_quote(key) .. " 2>/dev/null")
      local function small(i, from, to, dkim)
        return assert(mailer.message { from = from or "alice@example.com", to = to, subject = "small " .. i,
                                       text = ".first line\nmessage " .. i .. "\n", dkim = dkim })
      end
      local msgs = {
        small(1, nil, "user1@" .. d),
        small(2, nil, "unknown1@" .. d),                        -- every recipient refused
        small(3, nil, { "user2@" .. d, "unknown2@" .. d }),      -- one of two refused
        small(4, "refused@example.com", "user3@" .. d),         -- the sender refused
        small(5, nil, "user4@" .. d),
        small(6, nil, "user5@" .. d,                            -- signed: a stepped rendering
              { domain = "example.com", selector = "sel", key = key, algorithm = "ed25519-sha256" }),
        small(7, nil, "user6@" .. d),
      }
      local results = conn:send_many(msgs)
      conn:close()
      assert.are.equal(250, results[1].code, tostring(results[1].error))
      assert.are.equal("smtp", results[2].error.kind)
      assert.are.equal(550, results[2].error.code)
      assert.matches("all recipients were rejected", results[2].error.message)
      assert.are.equal(250, results[3].code, tostring(results[3].error))
      assert.are.same({ "user2@" .. d }, results[3].accepted)
      assert.are.equal("unknown2@" .. d, results[3].rejected[1].address)
      assert.are.equal(550, results[3].rejected[1].code)
      assert.are.equal("smtp", results[4].error.kind)
      assert.are.equal(554, results[4].error.code)
      assert.matches("Sender address rejected", results[4].error.message)
      for i = 5, 7 do assert.are.equal(250, results[i].code, tostring(results[i].error)) end
      -- on the wire: the first message's BDAT left before any reply came
      local first_bdat, mail1
      for i, l in ipairs(trace) do
        if not mail1 and l:match("^C MAIL FROM") then mail1 = i end
        if not first_bdat and l:match("^C BDAT %d+ LAST$") then first_bdat = i end
      end
      assert.truthy(first_bdat, table.concat(trace, "\n"))
      for i = mail1, first_bdat do
        assert.is_nil(trace[i]:match("^S "), "a reply came before the first BDAT:\n" .. table.concat(trace, "\n"))
      end
      assert.is_nil(table.concat(trace, "\n"):find("\nC RSET", 1, true))   -- no RSET was needed
      -- five messages delivered, each exactly as rendered
      local got, why = p:wait_messages(5, 30, { crlf = true })
      assert.are.equal(5, #got, why)
      local subjects = {}
      for _, m in ipairs(got) do subjects[#subjects + 1] = m:match("\r\nSubject: ([^\r]*)") end
      table.sort(subjects)
      assert.are.same({ "small 1", "small 3", "small 5", "small 6", "small 7" }, subjects)
      for _, m in ipairs(got) do
        local i = tonumber(m:match("\r\nSubject: small (%d)"))
        local raw = msgs[i]:render()
        assert.are.equal(raw, m:sub(-#raw))
      end
    end)

    -- a hostile progress callback with messages in flight: whatever the
    -- timing, no message that reached the server is reported as simply
    -- failed (a retry would send it twice): each delivered one has a
    -- receipt or an "outcome unknown" error, and every entry carries the
    -- error. The error comes from the progress of a large message (it waits
    -- for its RCPT replies, then streams) while small ones are on the wire
    -- before and after it.
    for _, when in ipairs { "first", "middle" } do
      it("a callback error with messages in flight never hides a delivery (" .. when .. " octets)", function()
        local p = servers.postfix {}
        local d = p.domain
        local conn = assert(mailer.connect { host = "127.0.0.1", port = p.port, security = "none", timeout = 30 })
        local msgs = {}
        for i = 1, 12 do
          local t = { from = "alice@example.com", to = "user" .. i .. "@" .. d,
                      subject = "flight " .. i, text = "message " .. i .. "\n" }
          if i == 4 then t.attachments = { { data = ("z"):rep(3 * 1024 * 1024), filename = "z.bin" } } end
          msgs[i] = assert(mailer.message(t))
        end
        local big = msgs[4]:size()
        local results = conn:send_many(msgs, { progress = function(sent, total)
          if total == big and sent > 0 and (when == "first" or sent > total / 2) then error("midway") end
        end })
        conn:close()
        assert.matches("midway", tostring(results.callback_error))
        local maybe, taken = {}, 0
        for i = 1, 12 do
          local r = results[i]
          if r then
            taken = i
            if r.code then
              maybe[i] = true
            else
              if r.error.message:find("outcome unknown", 1, true) then maybe[i] = true end
            end
          end
        end
        -- the large one was given up, before its end reached the wire
        assert.are.equal("input", results[4].error.kind)
        assert.matches("midway", tostring(results[4].error.callback_error))
        assert.is_nil(results[4].error.message:find("outcome unknown", 1, true))
        assert.is_true(taken >= 4 and taken <= 11, "taken: " .. taken)
        for i = taken + 1, 12 do assert.is_nil(results[i]) end
        -- what Postfix delivered: only messages reported delivered or unknown
        local got = p:wait_messages(12, 3, { crlf = true })
        for _, m in ipairs(got) do
          local i = tonumber(m:match("\r\nSubject: flight (%d+)"))
          assert.truthy(maybe[i], "message " .. tostring(i) .. " was delivered but reported failed")
        end
      end)
    end

    -- a source that fails under BDAT gives up its own message only: no
    -- BDAT LAST went out, so the RSET that starts the next transaction
    -- drops what the server got; the connection goes on
    it("a failing source gives up its own message only; the connection goes on", function()
      local p = servers.postfix {}
      local d = p.domain
      local conn = assert(mailer.connect { host = "127.0.0.1", port = p.port, security = "none", timeout = 30 })
      local function failing(big)
        local n = 0
        local size = big and 200000 or 30
        return { filename = "s.bin", size = size, source = function()
          n = n + 1
          if n == 1 then return ("s"):rep(big and 100000 or 10) end
          error("source broke")
        end }
      end
      local msgs = {}
      for i = 1, 8 do
        local t = { from = "alice@example.com", to = "user" .. i .. "@" .. d,
                    subject = "chain " .. i, text = "message " .. i .. "\n" }
        if i == 5 then t.attachments = { failing(false) } end   -- back to back
        if i == 7 then t.attachments = { failing(true) } end    -- after its RCPT replies, chunks out
        msgs[i] = assert(mailer.message(t))
      end
      local results = conn:send_many(msgs)
      for i = 1, 8 do
        if i == 5 or i == 7 then
          assert.are.equal("input", results[i].error.kind)
          assert.matches("source broke", results[i].error.message)
        else
          assert.are.equal(250, results[i].code, tostring(results[i].error))
        end
      end
      assert.is_nil(results.callback_error)   -- (a source error is the message's own)
      -- send on the same connection: the failure gave up one message, no more
      local r, err = conn:send(assert(mailer.message { from = "alice@example.com", to = "user9@" .. d,
                                                        subject = "chain 9", text = "after\n",
                                                        attachments = { failing(true) } }))
      assert.is_nil(r)
      assert.are.equal("input", err.kind)
      assert(conn:send { from = "alice@example.com", to = "user10@" .. d, subject = "chain 10", text = "ok\n" })
      conn:close()
      local got, why = p:wait_messages(7, 30, { crlf = true })
      assert.are.equal(7, #got, why)
      local seen = {}
      for _, m in ipairs(got) do seen[#seen + 1] = tonumber(m:match("\r\nSubject: chain (%d+)")) end
      table.sort(seen)
      assert.are.same({ 1, 2, 3, 4, 6, 8, 10 }, seen)
      for _, m in ipairs(got) do assert.is_nil(m:find("c3Nzc3Nz", 1, true)) end   -- nothing partial ("sss" in base64)
    end)

    it("delivers exactly what was rendered, DKIM still verifying", function()
      local p = servers.postfix {}
      local key = servers.mkdir("bdat-key") .. "/rsa.pem"
      os.execute("env -u LD_PRELOAD openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " ..
                 sh_quote(key) .. " 2>/dev/null")
      local lines = {}
      local conn = assert(mailer.connect { host = "127.0.0.1", port = p.port, security = "none", timeout = 30,
                                           trace = function(d, l) if d == "C" then lines[#lines + 1] = l end end })
      assert.is_true(conn.capabilities.CHUNKING)
      local msgs = {
        big_message(2, { to = "user1@" .. p.domain, subject = "one",
                         dkim = { domain = "example.com", selector = "sel", key = key } }),
        big_message(0, { to = "user2@" .. p.domain, subject = "two" }),
      }
      local results = conn:send_many(msgs)
      conn:close()
      for i = 1, 2 do assert.are.equal(250, results[i].code, tostring(results[i].error)) end
      local wire = table.concat(lines, "\n")
      assert.matches("BDAT %d+ LAST", wire)
      assert.is_nil(wire:find("\nDATA\n", 1, true))
      local got = p:wait_messages(2, 30, { crlf = true })
      assert.are.equal(2, #got)
      local by_subject = {}
      for _, m in ipairs(got) do by_subject[m:match("\r\nSubject: ([^\r]*)")] = m end
      for i, name in ipairs { "one", "two" } do
        local raw = msgs[i]:render()
        local delivered = assert(by_subject[name], "no message " .. name)
        assert.are.equal(raw, delivered:sub(-#raw))   -- Postfix only prepends its trace headers
      end
      -- the signed one verifies as delivered (python3-dkim)
      local dir = servers.mkdir("bdat-verify")
      writefile(dir .. "/m.eml", by_subject.one)
      local out = io.popen(PY .. " -c " .. sh_quote([[
import base64, subprocess, sys, dkim
der = subprocess.run(["openssl", "pkey", "-in", sys.argv[1], "-pubout", "-outform", "DER"], capture_output=True).stdout
rec = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
print(dkim.verify(open(sys.argv[2], "rb").read(), dnsfunc=lambda n, timeout=5: rec))
]]) .. " " .. sh_quote(key) .. " " .. sh_quote(dir .. "/m.eml")):read("*a")
      assert.are.equal("True\n", out)
    end)
  end)
end)
