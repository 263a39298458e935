-- Abuse of the Lua API: closed and collected objects, callbacks that raise,
-- yield or return junk, re-entrancy. Run under the ASan build by
-- scripts/test too, where a use-after-free or a leak fails the run.
local mailer = require "mailer"
local core = require "mailer.core"
local servers = require "support.servers"
local compat = require "support.compat"

local function base(t)
  local m = { from = "alice@example.com", to = "bob@example.com", subject = "s", text = "body",
              date = "Mon, 1 Jan 2024 00:00:00 +0000", message_id = "<x@example.com>" }
  for k, v in pairs(t or {}) do m[k] = v end
  return m
end

local function msg(t) return assert(mailer.message(base(t))) end

local function with_source(fn) return msg { attachments = { { filename = "x.bin", source = fn } } } end

local function close(obj) getmetatable(obj).__close(obj) end

describe("a closed message", function()
  it("can be closed twice and collected after", function()
    local m = msg()
    close(m)
    close(m)
    assert.matches("closed", tostring(m))
    m = nil
    collectgarbage()
    collectgarbage()
  end)

  -- `local x <close>` is Lua 5.4 syntax: compiled from a string there only
  local close_it = compat.has_close and it or pending
  close_it("is closed at the end of a <close> scope, then collected", function()
    local chunk = assert(compat.load([[
      local msg = ...
      do
        local m <close> = msg()
        assert(m:render())
      end
    ]], "close scope", _G))
    chunk(msg)
    collectgarbage()
    collectgarbage()
  end)

  it("raises a clear error on every method", function()
    local m = msg()
    close(m)
    for _, method in ipairs { "render", "chunks", "envelope", "size" } do
      assert.has_error(function() m[method](m) end, "attempt to use a closed message")
    end
    assert.has_error(function() m:header("Subject") end, "attempt to use a closed message")
  end)

  it("leaves an earlier rendering safe to collect (no use after free)", function()
    local m = msg { attachments = { { data = ("x"):rep(100000), filename = "big.bin" } } }
    assert.truthy(m:render())
    close(m)
    collectgarbage()
    collectgarbage()
  end)

  it("makes its chunks iterator raise rather than end early", function()
    local m = msg { attachments = { { data = ("x"):rep(10000), filename = "big.bin" } } }
    local it = m:chunks(100)
    assert.truthy(it())
    close(m)
    assert.has_error(function() it() end, "attempt to use a closed message")
    it = nil
    collectgarbage()
  end)
end)

describe("a message collected mid-chunks", function()
  it("is kept alive by its iterator, which gives the whole message", function()
    local m = msg { attachments = { { data = ("y"):rep(5000), filename = "y.bin" } } }
    local full = m:render()
    local it = m:chunks(7)
    local parts = { it() }
    m = nil
    collectgarbage()
    collectgarbage()
    for c in it do parts[#parts + 1] = c end
    assert.are.equal(full, table.concat(parts))
  end)

  it("frees everything when the iterator is dropped half way", function()
    local m = msg { attachments = { { data = ("z"):rep(5000), filename = "z.bin" } } }
    local it = m:chunks(10)
    assert.are.equal(10, #it())
    -- nothing but the iterator holds the message, and nothing holds the
    -- iterator: both are collected (the ASan run checks their C memory)
    local weak = setmetatable({ m, it }, { __mode = "v" })
    m, it = nil, nil
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
    assert.is_nil(weak[2])
  end)
end)

describe("a source that misbehaves", function()
  it("raising an error: render returns nil, err with the error's text", function()
    local m = with_source(function() error("disk on fire") end)
    local s, err = m:render()
    assert.is_nil(s)
    assert.is_true(core.is_error(err))
    assert.matches("disk on fire", err.message)
  end)

  it("raising an error: chunks raises an error object", function()
    local m = with_source(function() error("disk on fire") end)
    local ok, err = pcall(function() for _ in m:chunks() do end end)
    assert.is_false(ok)
    assert.is_true(core.is_error(err))
    assert.matches("disk on fire", err.message)
  end)

  it("raising a non-string error value", function()
    local m = with_source(function() error({ code = 42 }) end)
    local s, err = m:render()
    assert.is_nil(s)
    assert.is_true(core.is_error(err))
    local m2 = with_source(function() error(setmetatable({}, { __tostring = function() return "custom" end })) end)
    s, err = m2:render()
    assert.is_nil(s)
    assert.matches("custom", err.message)
  end)

  for _, v in ipairs { { 42, "number" }, { {}, "table" }, { true, "boolean" }, { false, "boolean" },
                       { print, "function" } } do
    it("returning a " .. v[2] .. " gives nil, err", function()
      local m = with_source(function() return v[1] end)
      local s, err = m:render()
      assert.is_nil(s)
      assert.is_true(core.is_error(err))
      assert.matches(v[2], err.message)
    end)
  end

  it("returning nil and a message reports the message", function()
    local s, err = with_source(function() return nil, "gone away" end):render()
    assert.is_nil(s)
    assert.matches("gone away", err.message)
  end)

  it("returning many empty strings, then data, then nil", function()
    local n = 0
    local m = with_source(function()
      n = n + 1
      if n < 1000 then return "" end
      if n == 1000 then return "data" end
      return nil
    end)
    assert.truthy(m:render())
  end)

  -- C never calls Lua: a source runs in the caller's coroutine and may
  -- yield with it (where pcall can yield: Lua 5.2+ and LuaJIT)
  local yield_in_pcall = (function()
    local co = coroutine.create(function() pcall(coroutine.yield) end)
    coroutine.resume(co)
    return coroutine.status(co) == "suspended"
  end)()
  local yit = yield_in_pcall and it or pending
  yit("yielding inside a coroutine: render yields with it and finishes on resume", function()
    local n = 0
    local m = with_source(function()
      n = n + 1
      coroutine.yield("sneaky")
      if n == 1 then return "abc" end
      return nil
    end)
    local co = coroutine.create(function() return m:render() end)
    local ok, s = coroutine.resume(co)
    assert.is_true(ok)
    assert.are.equal("sneaky", s)
    ok, s = coroutine.resume(co)
    assert.is_true(ok)
    ok, s = coroutine.resume(co)
    assert.is_true(ok)
    assert.are.equal("dead", coroutine.status(co))
    assert.matches("YWJj", s)   -- "abc" in base64
  end)

  it("yielding outside any coroutine: nil, err", function()
    local s, err = with_source(function() coroutine.yield() end):render()
    assert.is_nil(s)
    assert.matches("yield", err.message)
  end)

  it("closing its own message while it renders: an error, never a use after free", function()
    local m
    m = with_source(function() close(m) return "abc" end)
    assert.has_error(function() m:render() end, "attempt to use a closed message")
    assert.has_error(function() m:render() end, "attempt to use a closed message")
    -- closed between two chunks of a running iteration
    local m2 = msg { attachments = { { data = ("x"):rep(200000) } } }
    local it = m2:chunks(100)
    assert.is_string(it())
    close(m2)
    close(m2)
    assert.has_error(function() it() end, "attempt to use a closed message")
    m, m2, it = nil, nil, nil
    collectgarbage()
    collectgarbage()
  end)
end)

describe("connections", function()
  local s
  setup(function() s = servers.aiosmtpd {} end)
  teardown(function() servers.stop_all() end)

  local function connect()
    return assert(mailer.connect { host = s.host, port = s.port, security = "none", timeout = 10,
                                   helo = "client.test" })
  end

  local function count() return #s:messages() end

  it("close twice is harmless, __gc after close too", function()
    local c = connect()
    assert.is_true(c:close())
    assert.is_true(c:close())
    close(c)
    c = nil
    collectgarbage()
    collectgarbage()
  end)

  it("raises a clear error when used after close", function()
    local c = connect()
    c:close()
    assert.has_error(function() c:send(msg()) end, "attempt to use a closed connection")
    assert.has_error(function() c:noop() end, "attempt to use a closed connection")
    assert.has_error(function() c:reset() end, "attempt to use a closed connection")
  end)

  it("collected without close frees everything", function()
    local c = connect()
    assert.truthy(c:noop())
    c = nil
    collectgarbage()
    collectgarbage()
  end)

  for _, case in ipairs {
    { "source", function(m) return { attachments = { { filename = "a", source = m } } } end, nil },
    { "progress", nil, function(f) return { progress = f } end },
    { "trace", nil, nil },
  } do
    it("an error raised in the " .. case[1] .. " callback reaches the caller and delivers nothing", function()
      local before = count()
      local boom = function() error("callback exploded") end
      local c, armed = nil, false
      if case[1] == "trace" then
        -- armed once connected: an error while connecting is simply raised by connect
        c = assert(mailer.connect { host = s.host, port = s.port, security = "none", timeout = 10,
                                    trace = function(dir) if armed and dir == "C" then boom() end end })
        armed = true
      else
        c = connect()
      end
      -- big enough that the callback runs before the final dot is written
      local t = case[2] and base(case[2](boom)) or base { attachments = { { data = ("d"):rep(5000000), filename = "d" } } }
      local opts = case[3] and case[3](boom) or nil
      local ok, r, err = pcall(c.send, c, t, opts)
      assert.is_true(not ok or r == nil)
      local e = ok and err or r
      assert.matches("callback exploded", tostring(e))
      -- the connection is unusable (closed), never half way through DATA
      local ok2, r2 = pcall(c.noop, c)
      assert.is_true(not ok2 or r2 == nil)
      c:close()
      c = nil
      collectgarbage()
      local after = s:wait_messages(before + 1, 1)
      assert.are.equal(before, #after)
    end)
  end

  it("a source that yields outside a coroutine fails the send, nothing delivered", function()
    local before = count()
    local c = connect()
    local r, err = c:send(base { attachments = { { filename = "a", source = function() coroutine.yield() end } } })
    assert.is_nil(r)
    assert.matches("yield", tostring(err))
    c:close()
    assert.are.equal(before, #s:wait_messages(before, 1))
  end)

  it("is not collected while a send is in progress, even with every reference dropped", function()
    local before = count()
    local c = connect()
    local ref = setmetatable({ c }, { __mode = "v" })
    local n = 0
    local m = base { attachments = { { filename = "a", source = function()
      n = n + 1
      if n == 1 then
        c = nil
        collectgarbage()
        collectgarbage()
        return ("chunk"):rep(1000)
      end
      return nil
    end } } }
    local r, err = ref[1]:send(m)
    assert.truthy(r, tostring(err))
    assert.are.equal(before + 1, #s:wait_messages(before + 1, 5))
    collectgarbage()
    collectgarbage()
  end)

  it("a connection collected right after a failed send frees everything", function()
    local before = count()
    local c = connect()
    local ok, r, err = pcall(c.send, c, base { attachments = { { filename = "a",
      source = function() error("source failed on purpose") end } } })
    -- the source's error reaches the caller: raised, or as nil, err
    assert.is_true(not ok or r == nil)
    assert.matches("source failed on purpose", tostring(ok and err or r))
    local weak = setmetatable({ c }, { __mode = "v" })
    c = nil
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
    assert.are.equal(before, #s:wait_messages(before, 1))
  end)

  it("closing the connection from inside its own callbacks: done after the callback, the message given up", function()
    local before = count()
    local c = connect()
    local r, err = c:send(base { attachments = { { data = ("y"):rep(3000000) } } },
      { progress = function() c:close() end })
    assert.is_nil(r)
    assert.are.equal("input", err.kind)
    assert.matches("closed by one of its callbacks", err.message)
    assert.has_error(function() c:noop() end, "attempt to use a closed connection")
    assert.is_true(c:close())
    local c2 = connect()
    local r2, e2 = c2:send(base { attachments = { { filename = "a", source = function() c2:close() return "x" end } } })
    assert.is_nil(r2)
    assert.matches("closed by one of its callbacks", e2.message)
    c2:close()
    c2:close()
    assert.are.equal(before, #s:wait_messages(before, 1))
  end)
end)
