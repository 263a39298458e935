-- mailer.pool against aiosmtpd, on each runtime it has here: one blocking
-- connection at a time ("c"), copas and cqueues (driven by the pool from
-- plain Lua, and from inside a task of the loop): the rate measured on the
-- server's clock, max_messages, a connection the server dropped while it
-- idled (with a 421, or without a word), STARTTLS with a private CA,
-- results in input order.
local mailer = require "mailer"
local core = require "mailer.core"
local servers = require "support.servers"
local loops = require "support.loops"

local now = core.monotime

-- A message for recipient rcpt<i>@<tag>.example (the tag tells one spec's
-- messages from another's on a shared server).
local function message(tag, i)
  return { from = "alice@example.com", to = ("rcpt%d@%s.example"):format(i, tag),
           subject = tag .. " " .. i, text = "message " .. i .. " of " .. tag }
end

local function messages(tag, n)
  local list = {}
  for i = 1, n do list[i] = message(tag, i) end
  return list
end

-- The server's records of the messages sent to <tag>, in arrival order.
local function records(s, tag, n)
  local got, err = s:wait_messages(1, 0)
  local deadline = now() + 10
  while true do
    local mine = {}
    for _, rec in ipairs(s:messages()) do
      if rec.rcpt_tos[1] and rec.rcpt_tos[1]:find("@" .. tag .. ".example", 1, true) then
        mine[#mine + 1] = rec
      end
    end
    if #mine >= n or now() > deadline then return mine end
    core.sleep(0.02)
  end
end

local function assert_all_sent(results, n)
  for i = 1, n do
    assert.is_table(results[i], "no result for message " .. i)
    assert.is_nil(results[i].error, "message " .. i .. ": " .. tostring(results[i].error))
    assert.are.equal(250, results[i].code)
  end
end

-- The runtimes: name, socket option, and how the specs call the pool.
local runtimes = { { name = "c", socket = "c", call = function(fn) return fn() end } }
for _, L in ipairs(loops.list()) do
  runtimes[#runtimes + 1] = { name = L.name, socket = L.name, loop = L,
                              call = function(fn) return fn() end, why = L.why }
end

local shared
local function plain_server()
  if not (shared and shared:alive()) then shared = servers.aiosmtpd {} end
  return shared
end

describe("mailer.pool", function()
  teardown(function() servers.stop_all() end)

  it("checks its options", function()
    assert.has_error(function() mailer.pool() end)
    assert.has_error(function() mailer.pool { host = "h", size = "4" } end)
    assert.has_error(function() mailer.pool { host = "h", rate = 10 } end)
    assert.has_error(function() mailer.pool { host = "h", rate = { messages = "10" } } end)
    assert.has_error(function() mailer.pool { host = "h", socket = {} } end)
    local p, err = mailer.pool { host = "h", size = 0 }
    assert.is_nil(p)
    assert.are.equal("input", err.kind)
    assert.are.equal("size", err.field)
    p, err = mailer.pool { host = "h", rate = { messages = 10, per = 0 } }
    assert.is_nil(p)
    assert.are.equal("rate.per", err.field)
    p, err = mailer.pool { host = "h", max_messages = 1.5 }
    assert.is_nil(p)
    assert.are.equal("max_messages", err.field)
  end)

  it("closes once, and refuses to be used after", function()
    local s = plain_server()
    local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", socket = "c" })
    assert.are.equal(250, assert(pool:send(message("closing", 1))).code)
    assert.is_true(pool:close())
    assert.is_true(pool:close())
    assert.has_error(function() pool:send(message("closing", 2)) end, "attempt to use a closed pool")
    assert.has_error(function() pool:send_all({}) end, "attempt to use a closed pool")
  end)

  it("runs on copas from plain Lua when copas is installed, else one connection at a time", function()
    local pool = assert(mailer.pool { host = "127.0.0.1", port = 9 })
    local want = loops.copas() and require("mailer.socket.copas").available() and "copas" or "c"
    assert.matches("^mailer%.Pool %(open, " .. want .. ",", tostring(pool))
    pool:close()
  end)

  it("gives results in input order, with entries that are not messages in place", function()
    local s = plain_server()
    local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", size = 3 })
    local list = messages("order", 12)
    list[4] = 42
    list[7] = { from = "alice@example.com", subject = "no recipient", text = "x" }
    local results = pool:send_all(list)
    pool:close()
    for i = 1, 12 do
      if i == 4 or i == 7 then
        assert.are.equal("input", results[i].error.kind)
      else
        assert.is_nil(results[i].error)
        assert.are.same({ ("rcpt%d@order.example"):format(i) }, results[i].accepted)
      end
    end
    assert.are.equal(10, #records(s, "order", 10))
  end)

  it("asks NOOP of a connection idle a second or more, and keeps it when it answers", function()
    local s = servers.aiosmtpd {}
    finally(function() s:stop() end)
    local seen = {}
    local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", socket = "c",
                                      trace = function(dir, line) if dir == "C" then seen[#seen + 1] = line end end })
    assert.are.equal(250, assert(pool:send(message("noop", 1))).code)
    assert.are.equal(250, assert(pool:send(message("noop", 2))).code)
    core.sleep(1.05)
    assert.are.equal(250, assert(pool:send(message("noop", 3))).code)
    pool:close()
    local noops = 0
    for _, line in ipairs(seen) do if line:match("^NOOP") then noops = noops + 1 end end
    assert.are.equal(1, noops)
    assert.are.equal(1, s:connections())
  end)

  it("checks with NOOP where a socket cannot be read without waiting (a cosocket)", function()
    local cosocket = require "support.cosocket"
    local s = servers.aiosmtpd { idle_timeout = 0.2, idle_reply = "421 4.4.2 Idle timeout" }
    finally(function() s:stop() end)
    local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none",
                                      socket = function() return cosocket.tcp() end })
    assert.are.equal(250, assert(pool:send(message("cosocket", 1))).code)
    core.sleep(0.35)
    local r, err = pool:send(message("cosocket", 2))
    assert.is_nil(err)
    assert.are.equal(250, r.code)
    pool:close()
    assert.are.equal(2, s:connections())
  end)

  for _, R in ipairs(runtimes) do
  describe("on " .. R.name, function()
    if R.loop and not R.loop.lib then
      pending(R.name .. ": " .. R.why)
      return
    end

    it("keeps its rate, measured on the server's clock", function()
      local s = plain_server()
      local tag = "rate-" .. R.name
      local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", socket = R.socket,
                                        size = 3, rate = { messages = 4, per = 0.5 } })
      local t0 = now()
      local results = pool:send_all(messages(tag, 12))
      local elapsed = now() - t0
      pool:close()
      assert_all_sent(results, 12)
      local recs = records(s, tag, 12)
      assert.are.equal(12, #recs)
      local times = {}
      for i, rec in ipairs(recs) do times[i] = rec.time end
      table.sort(times)
      -- any 5 messages span about `per`, less the jitter between the start
      -- on our side and the end of DATA on the server's (which grows under
      -- ASan on 2 busy cores), and over the run the rate holds: the 1st and
      -- the 9th are two periods apart. Without a limit, all 12 arrive within
      -- a few milliseconds.
      for k = 1, #times - 4 do
        assert.is_true(times[k + 4] - times[k] >= 0.35,
          ("messages %d and %d arrived %.3f s apart"):format(k, k + 4, times[k + 4] - times[k]))
      end
      assert.is_true(times[9] - times[1] >= 0.9,
        ("messages 1 and 9 arrived %.3f s apart"):format(times[9] - times[1]))
      assert.is_true(elapsed >= 0.95 and elapsed < 3, ("12 messages at 4 per 0.5 s took %.2f s"):format(elapsed))
    end)

    it("QUITs after max_messages and goes on with a new connection", function()
      local s = servers.aiosmtpd {}
      finally(function() s:stop() end)
      local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", socket = R.socket,
                                        size = 1, max_messages = 3 })
      assert_all_sent(pool:send_all(messages("max", 10)), 10)
      -- the fourth connection is idle in the pool with one message
      assert.are.equal(4, s:connections())
      assert.are.equal(250, assert(pool:send(message("max", 11))).code)
      assert.are.equal(250, assert(pool:send(message("max", 12))).code)
      assert.are.equal(250, assert(pool:send(message("max", 13))).code)
      pool:close()
      local per = {}
      for _, rec in ipairs(records(s, "max", 13)) do per[rec.connection] = (per[rec.connection] or 0) + 1 end
      assert.are.same({ 3, 3, 3, 3, 1 }, per)
      assert.are.equal(5, s:connections())
    end)

    it("keeps every connection under max_messages when several run at once", function()
      local s = servers.aiosmtpd {}
      finally(function() s:stop() end)
      local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", socket = R.socket,
                                        size = 3, max_messages = 4 })
      assert_all_sent(pool:send_all(messages("max3", 20)), 20)
      pool:close()
      local per, total = {}, 0
      for _, rec in ipairs(records(s, "max3", 20)) do per[rec.connection] = (per[rec.connection] or 0) + 1 end
      for _, n in pairs(per) do
        assert.is_true(n <= 4)
        total = total + n
      end
      assert.are.equal(20, total)
    end)

    for _, variant in ipairs { { name = "with a 421", reply = "421 4.4.2 mx.test.example Idle timeout, closing connection" },
                               { name = "without a word", only = "c" } } do
      if variant.only and variant.only ~= R.name then break end
      it("replaces a connection the server closed while it idled (" .. variant.name .. ")", function()
        local s = servers.aiosmtpd { idle_timeout = 0.2, idle_reply = variant.reply }
        finally(function() s:stop() end)
        local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", socket = R.socket })
        assert.are.equal(250, assert(pool:send(message("idle", 1))).code)
        core.sleep(0.35)   -- the server gives up on the idle connection
        local r, err = pool:send(message("idle", 2))
        assert.is_nil(err)
        assert.are.equal(250, r.code)
        -- send_all too, after another idle drop
        core.sleep(0.35)
        assert_all_sent(pool:send_all { message("idle", 3), message("idle", 4) }, 2)
        pool:close()
        assert.are.equal(4, #records(s, "idle", 4))
        -- one connection for each message after a drop (send_all sends the
        -- two at once where it can)
        assert.are.equal(R.loop and 4 or 3, s:connections())
      end)
    end

    it("sends over STARTTLS with a private CA, and refuses an unknown one", function()
      local ca = servers.ca()
      local s = servers.aiosmtpd { tls = "starttls", require_starttls = true,
                                   auth = { user = "u", password = "secret" } }
      finally(function() s:stop() end)
      local opts = { host = "localhost", port = s.port, security = "starttls", socket = R.socket,
                     tls = { cafile = ca.cafile }, username = "u", password = "secret", size = 3 }
      local pool = assert(mailer.pool(opts))
      assert_all_sent(pool:send_all(messages("tls", 9)), 9)
      pool:close()
      for _, rec in ipairs(records(s, "tls", 9)) do
        assert.is_true(rec.tls)
        assert.are.equal("u", rec.auth)
      end
      opts.tls = { cafile = ca.untrusted_cafile }
      pool = assert(mailer.pool(opts))
      local results = pool:send_all(messages("tls-bad", 4))
      pool:close()
      for i = 1, 4 do
        assert.are.equal("tls", results[i].error.kind)
        assert.matches("certificate verification", results[i].error.message)
      end
      assert.are.equal(9, #s:messages())
    end)

    if R.loop then
      it("runs inside a task of the loop, and other tasks go on meanwhile", function()
        local s = plain_server()
        local L = R.loop
        local results, ticks = nil, 0
        L.run(function()
          local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", size = 4,
                                            rate = { messages = 20, per = 0.5 } })
          assert.matches("%(open, " .. R.name .. ",", tostring(pool))
          local done = false
          L.spawn(function()
            while not done do
              ticks = ticks + 1
              L.sleep(0.01)
            end
          end)
          results = pool:send_all(messages("inside-" .. R.name, 30))
          done = true
          pool:close()
        end)
        assert_all_sent(results, 30)
        assert.is_true(ticks >= 20, "the other task ran " .. ticks .. " times")
      end)

      it("shares size connections among tasks that call pool:send at once", function()
        local s = servers.aiosmtpd { greeting_delay = 0.1 }
        finally(function() s:stop() end)
        local L = R.loop
        local results = {}
        L.run(function()
          local pool = assert(mailer.pool { host = s.host, port = s.port, security = "none", size = 2 })
          local left = 10
          for i = 1, 10 do
            L.spawn(function()
              local r, err = pool:send(message("share-" .. R.name, i))
              results[i] = r or { error = err }
              left = left - 1
            end)
          end
          while left > 0 do L.sleep(0.01) end
          pool:close()
        end)
        assert_all_sent(results, 10)
        assert.are.equal(2, s:connections())
      end)
    end
  end)
  end
end)
