-- Hostile callbacks, on every socket: each case of the "one driver" issue
-- as it was reproduced (crashes, use-after-free, stale lua_State, leaks,
-- duplicates, spins), now with its defined result. Runs under ASan and
-- valgrind too (scripts/test, scripts/valgrind-specs), where a memory
-- error fails the run.
local mailer = require "mailer"
local core = require "mailer.core"
local servers = require "support.servers"
local transports = require "support.transports"

local function base(t)
  local m = { from = "alice@example.com", to = "bob@example.com", subject = "s", text = "body",
              date = "Mon, 1 Jan 2024 00:00:00 +0000", message_id = "<x@example.com>" }
  for k, v in pairs(t or {}) do m[k] = v end
  return m
end

local function msg(t) return assert(mailer.message(base(t))) end

-- Can a coroutine yield across pcall here (5.2+, LuaJIT; not PUC 5.1)?
local yield_in_pcall = (function()
  local co = coroutine.create(function() pcall(coroutine.yield) end)
  coroutine.resume(co)
  return coroutine.status(co) == "suspended"
end)()

local big = ("0123456789abcdef"):rep(4 * 65536)   -- 4 MiB: the body outlives one write

for _, tr in ipairs(transports.list()) do
  describe("hostile callbacks (" .. tr.name .. ")", function()
    local s
    setup(function() s = servers.aiosmtpd {} end)
    teardown(function() servers.stop_all() end)

    local function connect(extra)
      local o = { host = s.host, port = s.port, security = "none", timeout = 10, helo = "client.test" }
      for k, v in pairs(extra or {}) do o[k] = v end
      return assert(tr.connect(o))
    end
    local function count() return #s:messages() end
    local function settle(n) return #s:wait_messages(n, 1) end

    it("a send_many producer that closes the connection: a defined error, nothing half sent", function()
      local before = count()
      local c = connect()
      local calls = 0
      local results = c:send_many(function()
        calls = calls + 1
        if calls == 1 then c:close(); return msg() end
        if calls == 2 then return msg() end
        return nil
      end)
      assert.is_table(results[1].error)
      assert.matches("closed by one of its callbacks", results[1].error.message)
      assert.is_nil(results[2])   -- nothing more is produced once closing
      assert.matches("closed", tostring(c))
      assert.is_true(c:close())
      assert.has_error(function() c:noop() end, "attempt to use a closed connection")
      assert.are.equal(before, settle(before))
    end)

    it("a trace callback that closes the connection at MAIL: the message is not sent", function()
      local before = count()
      local c
      c = connect { trace = function(dir, line)
        if dir == "C" and line:match("^MAIL") then c:close() end
      end }
      local r, err = c:send(msg { attachments = { { data = big, filename = "big.bin" } } })
      assert.is_nil(r)
      assert.are.equal("input", err.kind)
      assert.matches("closed by one of its callbacks", err.message)
      assert.are.equal(before, settle(before))
      assert.is_true(c:close())
    end)

    it("a trace callback that sends on its own busy connection: a clear error, no re-entry", function()
      local before = count()
      local c, inner
      c = connect { trace = function(dir, line)
        if c and dir == "S" and line:match("^250") and not inner then
          inner = true
          c:send(msg())   -- raises: connection busy
        end
      end }
      local ok, err = pcall(c.send, c, msg { attachments = { { data = big, filename = "big.bin" } } })
      assert.is_false(ok)
      assert.matches("connection busy", tostring(err))
      assert.are.equal(before, settle(before))
      c:close()
    end)

    it("a source that closes the connection: the message is never completed", function()
      local before = count()
      local c = connect()
      local n = 0
      local r, err = c:send(msg { attachments = { { filename = "s.bin", source = function()
        n = n + 1
        if n == 2 then c:close() end
        if n < 5 then return ("x"):rep(100000) end
      end } } })
      assert.is_nil(r)
      assert.matches("closed by one of its callbacks", err.message)
      assert.are.equal(before, settle(before))
      assert.has_error(function() c:noop() end, "attempt to use a closed connection")
    end)

    it("a source that calls noop on its busy connection: the send fails, nothing delivered", function()
      local before = count()
      local c = connect()
      local r, err = c:send(msg { attachments = { { filename = "s.bin", source = function()
        c:noop()
      end } } })
      assert.is_nil(r)
      assert.matches("connection busy", err.message)
      assert.are.equal(before, settle(before))
      c:close()
    end)

    it("a progress error after the server accepted the message: the receipt, with callback_error", function()
      local before = count()
      local c = connect()
      local r, err = c:send(msg(), { progress = function(sent, total)
        if sent == total then error("progress exploded") end
      end })
      assert.is_table(r, tostring(err))
      assert.are.equal(250, r.code)
      assert.matches("progress exploded", tostring(r.callback_error))
      assert.are.equal(before + 1, settle(before + 1))
      -- the connection is fine: the message is not sent twice, the next one goes
      assert.truthy(c:send(msg()))
      assert.are.equal(before + 2, settle(before + 2))
      c:close()
    end)

    it("send_many: a progress error keeps the receipts already known, stops the rest", function()
      local before = count()
      local c = connect()
      local list = {}
      for i = 1, 6 do list[i] = msg() end
      local results = c:send_many(list, { progress = function(sent, total)
        if sent == total then error("once") end
      end })
      assert.matches("once", tostring(results.callback_error))
      -- the first was wholly sent: its receipt says so, with the error
      assert.are.equal(250, results[1].code)
      assert.matches("once", tostring(results[1].callback_error))
      -- the ones behind it were in flight (the engine's window: three for
      -- DATA): each delivered if its body had gone out already, else given
      -- up; either way it carries the error. Then send_many stopped: the
      -- rest were never taken, their entries stay nil.
      local delivered, taken = 1, 1
      for i = 2, 6 do
        local r = results[i]
        if r == nil then break end
        taken = i
        if r.code then
          delivered = delivered + 1
          assert.matches("once", tostring(r.callback_error))
        else
          assert.are.equal("input", r.error.kind)
          assert.matches("once", tostring(r.error.callback_error))
        end
      end
      assert.is_true(taken <= 3, "taken: " .. taken)
      for i = taken + 1, 6 do assert.is_nil(results[i]) end
      assert.are.equal(before + delivered, settle(before + delivered))
      assert.are.equal(before + delivered, #s:wait_messages(before + delivered + 1, 1))
      c:close()
    end)

    it("a source that yields more octets than its announced size fails with kind input", function()
      local before = count()
      local c = connect()
      local n = 0
      local m = msg { attachments = { { filename = "s.bin", size = 10, source = function()
        n = n + 1
        if n <= 3 then return "0123456789" end
      end } } }
      assert.is_number(m:size())
      local r, err = c:send(m)
      assert.is_nil(r)
      assert.are.equal("input", err.kind)
      assert.matches("announced size of 10", err.message)
      assert.are.equal(before, settle(before))
      c:close()
    end)

    it("a source that yields fewer octets than announced fails with kind input", function()
      local before = count()
      local c = connect()
      local n = 0
      local r, err = c:send(msg { attachments = { { filename = "s.bin", size = 628, source = function()
        n = n + 1
        if n == 1 then return "short" end
      end } } })
      assert.is_nil(r)
      assert.are.equal("input", err.kind)
      assert.matches("fewer octets", err.message)
      assert.are.equal(before, settle(before))
      c:close()
    end)

    it("a source that keeps returning empty strings stops at the timeout", function()
      local c = connect { timeout = 1 }
      local t0 = os.time()
      local r, err = c:send(msg { attachments = { { filename = "s.bin", source = function() return "" end } } })
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.is_true(os.time() - t0 <= 4)
      c:close()
    end)

    it("the DKIM pass runs in steps under the same deadline", function()
      local c = connect { timeout = 1 }
      local keyfile = servers.tmpdir() .. "/ed25519.pem"
      assert(os.execute("openssl genpkey -algorithm ed25519 -out '" .. keyfile .. "' 2>/dev/null"))
      local spec = { domain = "example.com", selector = "s", algorithm = "ed25519-sha256", key = keyfile }
      local t0 = os.time()
      local r, err = c:send(msg { dkim = spec, attachments = { { filename = "s.bin", source = function() return "" end } } })
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.is_true(os.time() - t0 <= 4)
      c:close()
    end)

    it("a source using its message in a short-lived coroutine, then collecting: no stale state", function()
      local before = count()
      local c = connect()
      local m
      local n = 0
      m = msg { attachments = { { filename = "s.bin", source = function()
        n = n + 1
        local co = coroutine.create(function() return m:size() end)
        coroutine.resume(co)
        co = nil
        collectgarbage()
        collectgarbage()
        if n <= 3 then return ("z"):rep(70000) end
      end } } }
      assert.truthy(c:send(m))
      assert.are.equal(before + 1, settle(before + 1))
      c:close()
    end)

    local yit = yield_in_pcall and it or pending
    yit("a source that yields: the send yields with its coroutine and completes on resume", function()
      local before = count()
      local c = connect()
      local n = 0
      local co = coroutine.create(function()
        return c:send(msg { attachments = { { filename = "s.bin", source = function()
          n = n + 1
          coroutine.yield("paused " .. n)
          if n <= 2 then return ("y"):rep(1000) end
        end } } })
      end)
      local ok, v = coroutine.resume(co)
      assert.is_true(ok)
      assert.are.equal("paused 1", v)
      -- the connection is busy meanwhile
      assert.has_error(function() c:noop() end)
      while coroutine.status(co) == "suspended" do
        ok, v = coroutine.resume(co)
        assert.is_true(ok, tostring(v))
      end
      assert.are.equal(250, v.code)
      assert.are.equal(before + 1, settle(before + 1))
      c:close()
    end)

    yit("a coroutine that dies in the middle of a send frees everything", function()
      local co = coroutine.create(function()
        local c = connect()
        return c:send(msg { attachments = { { filename = "s.bin", source = function()
          coroutine.yield()
          return "never"
        end } } })
      end)
      assert.is_true(coroutine.resume(co))
      co = nil
      collectgarbage()
      collectgarbage()
      -- the server is still fine
      local c = connect()
      assert.truthy(c:noop())
      c:close()
    end)
  end)
end

describe("messages and sources", function()
  it("a source closure that refers to its own message is collected with it", function()
    local weak = setmetatable({}, { __mode = "v" })
    do
      local m
      m = msg { attachments = { { filename = "s.bin", source = function()
        return m and nil
      end } } }
      weak[1] = m
      assert.truthy(m:render())
    end
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
  end)

  local yit = yield_in_pcall and it or pending
  yit("two coroutines rendering one message take turns, each gets its own bytes", function()
    local n = 0
    local m = msg { attachments = { { filename = "s.bin", size = nil, source = function()
      n = n + 1
      coroutine.yield()
      if n % 2 == 1 then return "abc" end
    end } } }
    local a = coroutine.create(function() return m:render() end)
    local b = coroutine.create(function() return m:render() end)
    coroutine.resume(a)
    local okb, rb, eb = coroutine.resume(b)
    -- a source is read once: the second rendering is refused, the first goes on
    assert.is_true(okb)
    assert.is_nil(rb)
    assert.matches("only once", eb.message)
    local ra
    while coroutine.status(a) == "suspended" do
      local ok
      ok, ra = coroutine.resume(a)
      assert.is_true(ok)
    end
    assert.is_string(ra)
  end)

  it("render(): a size mismatch is an input error, never a wrong SIZE", function()
    local m = msg { attachments = { { filename = "s.bin", size = 628, source = function() return nil end } } }
    local r, err = m:render()
    assert.is_nil(r)
    assert.are.equal("input", err.kind)
  end)
end)
