-- socket = "copas" and socket = "cqueues" against real servers: many sends
-- at once, each delivered once and byte for byte; the loop picked by
-- default inside a task; certificates refused; a stalled server timing
-- out while the host sits in its loop; and a host loop that keeps ticking
-- while a big message goes to a slow server. A loop that is not installed
-- for this Lua makes its specs pending.
local mailer = require "mailer"
local core = require "mailer.core"
local servers = require "support.servers"
local loops = require "support.loops"

local now = core.monotime

local function message(i, extra)
  local t = { from = "alice@example.com", to = ("rcpt%d@example.com"):format(i),
              subject = "loop message " .. i, text = ("body of message %d\n.\nwith a dot line\n"):format(i),
              message_id = ("<loop-%d-%s@example.com>"):format(i, core.random_hex(6)) }
  for k, v in pairs(extra or {}) do t[k] = v end
  return assert(mailer.message(t))
end

-- Servers shared by both loops (each costs a Python start-up), by key.
local shared = {}
local function server(key, opts)
  local s = shared[key]
  if not (s and s:alive()) then
    s = servers.aiosmtpd(opts)
    shared[key] = s
  end
  return s
end

describe("event loops", function()
teardown(function() servers.stop_all() end)
for _, L in ipairs(loops.list()) do
describe("socket = \"" .. L.name .. "\"", function()
  if not L.lib then
    pending(L.name .. ": " .. L.why)
    return
  end

  it("sends 20 messages at once, each delivered once and byte for byte", function()
    -- every connection waits 0.3 s for its greeting: in sequence that
    -- would take 6 s
    local s = servers.aiosmtpd { tls = "starttls", greeting_delay = 0.3 }
    finally(function() s:stop() end)
    local msgs, results, kinds = {}, {}, {}
    for i = 1, 20 do msgs[i] = message(i) end
    local t0 = now()
    L.run(function()
      for i = 1, 20 do
        L.spawn(function()
          -- no socket option: the loop is picked because this is its task
          local conn, err = mailer.connect { host = "localhost", port = s.port, tls = { cafile = s.cafile } }
          if not conn then
            results[i] = { error = err }
            return
          end
          kinds[i] = conn.kind
          local r, e = conn:send(msgs[i])
          results[i] = r or { error = e }
          conn:close()
        end)
      end
    end)
    local elapsed = now() - t0
    for i = 1, 20 do
      assert.is_nil(results[i].error, tostring(results[i].error))
      assert.are.equal(250, results[i].code)
      assert.are.equal(L.name, kinds[i])
    end
    assert.is_true(elapsed < 3, ("20 sends took %.2f s: not concurrent"):format(elapsed))
    local got = s:wait_messages(20, 10)
    assert.are.equal(20, #got)
    local by_id = {}
    for _, rec in ipairs(got) do
      local id = rec.data:match("\r\nMessage%-ID: (<[^>]+>)") or rec.data:match("^Message%-ID: (<[^>]+>)")
      assert.is_nil(by_id[id], "delivered twice: " .. tostring(id))
      by_id[id] = rec
      assert.is_true(rec.tls)
    end
    for i = 1, 20 do
      local rec = by_id[msgs[i]:header("Message-ID")]
      assert.is_table(rec, "message " .. i .. " was not delivered")
      assert.is_true(rec.data == msgs[i]:render(), "message " .. i .. " differs from what was rendered")
      assert.are.same({ ("rcpt%d@example.com"):format(i) }, rec.rcpt_tos)
    end
    assert.are.equal(20, s:connections())
  end)

  it("is refused outside its loop, with the reason", function()
    local conn, err = mailer.connect { host = "127.0.0.1", port = 9, socket = L.name }
    assert.is_nil(conn)
    assert.are.equal("unsupported", err.kind)
    assert.matches(L.name, err.message)
  end)

  describe("refuses bad certificates", function()
    local ca
    setup(function() ca = servers.ca() end)
    local cases = {
      { cert = "self-signed", why = "self%-signed" },
      { cert = "expired", why = "expired" },
      { cert = "untrusted", why = "unknown %(untrusted%) CA" },
      { cert = "wrong-host", why = "host name mismatch" },
      { cert = "partial-wildcard", servername = "www.example.test", why = "host name mismatch" },
    }
    for _, c in ipairs(cases) do
      for _, security in ipairs { "tls", "starttls" } do
        it(c.cert .. " (" .. security .. ")", function()
          local mode = security == "tls" and "implicit" or "starttls"
          local s = server(c.cert .. "/" .. mode, { tls = mode, cert = c.cert })
          local conn, err
          L.run(function()
            conn, err = mailer.connect { host = "localhost", port = s.port, security = security,
              tls = { cafile = ca.cafile, servername = c.servername }, socket = L.name }
          end)
          assert.is_nil(conn)
          assert.are.equal("tls", err.kind)
          assert.matches("certificate verification", err.message)
          assert.matches(c.why, err.message)
        end)
      end
    end

    it("and takes a good one (verification on by default)", function()
      local s = server("good/implicit", { tls = "implicit", cert = "good" })
      local r, err
      L.run(function()
        local conn = assert(mailer.connect { host = "localhost", port = s.port, security = "tls",
                                             tls = { cafile = ca.cafile } })
        assert.are.equal(L.name, conn.kind)
        r, err = conn:send(message(1))
        conn:close()
      end)
      assert.is_nil(err)
      assert.are.equal(250, r.code)
      -- no cafile: the system store does not know our CA
      local conn
      L.run(function()
        conn, err = mailer.connect { host = "localhost", port = s.port, security = "tls" }
      end)
      assert.is_nil(conn)
      assert.are.equal("tls", err.kind)
    end)
  end)

  it("times out a server that says nothing, while the host waits in the loop", function()
    local h = servers.hostile { { sleep = 3 }, { close = true } }
    local conn, err, elapsed
    local t0 = now()
    -- copas steps with a 5 s select timeout: only our own timer can end
    -- the wait on time
    L.run(function()
      conn, err = mailer.connect { host = h.host, port = h.port, security = "none", timeout = 0.3 }
      elapsed = now() - t0
    end, 5)
    assert.is_nil(conn)
    assert.are.equal("timeout", err.kind)
    assert.is_true(elapsed >= 0.29 and elapsed < 1.5, ("timed out after %.2f s"):format(elapsed))
    h:stop()
  end)

  it("keeps the host loop ticking every 20 ms while 5 MiB go to a slow server", function()
    -- a server that waits 0.1 s before each reply (aiosmtpd reads a body
    -- line by line in Python: too slow for 7 MB on a shared CI machine)
    local function slow(reply, expect)
      return { expect = expect }, { sleep = 0.1 }, { send = reply .. "\r\n" }
    end
    local steps = { { sleep = 0.1 }, { send = "220 slow.test ESMTP\r\n" } }
    for _, st in ipairs { { slow("250 slow.test", "EHLO") }, { slow("250 ok", "MAIL") },
                          { slow("250 ok", "RCPT") }, { slow("354 go on", "DATA") } } do
      for _, x in ipairs(st) do steps[#steps + 1] = x end
    end
    for _, x in ipairs { { expect_data = true }, { sleep = 0.1 }, { send = "250 queued\r\n" },
                         { expect = "QUIT" }, { send = "221 bye\r\n" }, { close = true } } do
      steps[#steps + 1] = x
    end
    local s = servers.hostile(steps)
    finally(function() s:stop() end)
    local blob = {}
    for i = 1, 5 * 1024 do blob[i] = ("%05d "):format(i) .. ("0123456789abcdef"):rep(63) .. "\n" end
    blob = table.concat(blob)
    local msg = message(1, { attachments = { { data = blob, filename = "big.bin",
                                               content_type = "application/octet-stream" } } })
    local result, err, done
    local function task()
      local conn
      conn, err = mailer.connect { host = s.host, port = s.port, security = "none" }
      if conn then
        result, err = conn:send(msg)
        conn:close()
      end
      done = true
    end
    local step
    if L.name == "copas" then
      L.lib.addthread(task)
      step = function() L.lib.step(0) end
    else
      local cq = L.lib.new()
      cq:wrap(task)
      step = function() assert(cq:step(0)) end
    end
    -- the game's frame loop: one step of the loop, then the frame's own
    -- work (2 ms asleep here). What the loop may hold up is measured in
    -- CPU time (os.clock): the cores of a CI machine are shared, and a
    -- wall-clock gap there also counts the time this process was not run.
    local worst, worst_wall, ticks = 0, 0, 0
    local last, last_wall = os.clock(), now()
    while not done do
      step()
      core.sleep(0.002)
      local t, w = os.clock(), now()
      if t - last > worst then worst = t - last end
      if w - last_wall > worst_wall then worst_wall = w - last_wall end
      last, last_wall, ticks = t, w, ticks + 1
    end
    assert.is_nil(err)
    assert.are.equal(250, result.code)
    assert.is_true(ticks > 100, "too few frames: " .. ticks)
    assert.is_true(worst < 0.020, ("a frame took %.1f ms of CPU time (%d frames; worst wall-clock gap %.1f ms)")
      :format(worst * 1000, ticks, worst_wall * 1000))
    assert.is_true(s:wait(10))
    local body = s:received(1):match("\r\nDATA\r\n(.*)\r\n%.\r\nQUIT\r\n$")
    assert.is_string(body)
    body = ("\r\n" .. body):gsub("\r\n%.%.", "\r\n."):sub(3) .. "\r\n"
    assert.are.equal(#msg:render(), #body)
    assert.is_true(body == msg:render(), "the server got other bytes than were rendered")
  end)
end)
end
end)
