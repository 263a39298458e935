-- The C socket's steps that never wait (tryconnect, tryhandshake,
-- trysend, tryreceive), which the event-loop sockets are made of, and
-- core.waiter (epoll + timerfd), against peers in this process (LuaSocket)
-- and the TLS peers of the spec helpers. LuaSocket's select does the
-- waiting here, as copas' loop does.
local core = require "mailer.core"
local socket = require "socket"
local servers = require "support.servers"

local now = core.monotime

-- Wait until fd is ready for want ("wantread" / "wantwrite"): true, or
-- false after timeout seconds.
local function ready(fd, want, timeout)
  local obj = { getfd = function() return fd end }
  local r, w = socket.select(want ~= "wantwrite" and { obj } or nil, want == "wantwrite" and { obj } or nil,
                             timeout or 5)
  return #(want == "wantwrite" and w or r) > 0
end

-- Run step() until it returns something other than a want, waiting on
-- sock's descriptor in between.
local function drive(sock, step)
  for _ = 1, 1000 do
    local a, b, c = step()
    if a or (b ~= "wantread" and b ~= "wantwrite") then return a, b, c end
    assert(ready(sock:getfd(), b), "no readiness for " .. b)
  end
  error("did not finish")
end

-- A listening LuaSocket on 127.0.0.1 and a connected pair: our socket and
-- the peer's end.
local function pair()
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  local sock = core.socket()
  local ok, err = drive(sock, function() return sock:tryconnect("127.0.0.1", tonumber(port)) end)
  assert.are.equal(1, ok, err)
  srv:settimeout(5)
  local peer = assert(srv:accept())
  srv:close()
  return sock, peer
end

describe("socket steps", function()
  teardown(function() servers.stop_all() end)

  it("connects, reads what there is, and says what it waits for", function()
    local sock, peer = pair()
    assert.are.same({ nil, "wantread" }, { sock:tryreceive(100) })
    peer:send("hello\r\n")
    assert.is_true(ready(sock:getfd(), "wantread"))
    assert.are.equal("hello\r\n", sock:tryreceive(100))
    peer:close()
    local data, err, kind = drive(sock, function() return sock:tryreceive(100) end)
    assert.is_nil(data)
    assert.are.equal("closed", err)
    assert.are.equal("network", kind)
    assert.are.equal(-1, sock:getfd())
  end)

  it("writes what the socket takes and says where it stopped", function()
    local sock, peer = pair()
    local big = ("0123456789abcdef"):rep(1048576)   -- 16 MiB: more than the buffers hold
    local j, want = sock:trysend(big)
    assert.is_true(j > 0 and j < #big)
    assert.are.equal("wantwrite", want)
    local j2, want2 = sock:trysend(big, j + 1)   -- (little or nothing more fits yet)
    assert.is_true(j2 >= j and j2 < #big)
    assert.are.equal("wantwrite", want2)
    peer:settimeout(5)
    local got, total = {}, 0
    local i = j2 + 1
    while total < #big do
      local chunk, err, part = peer:receive(65536)
      chunk = chunk or part
      assert(chunk and #chunk > 0, err)
      got[#got + 1] = chunk
      total = total + #chunk
      if i <= #big then
        local k, w = sock:trysend(big, i)
        assert.is_number(k)
        i = k + 1
        if i <= #big then assert.are.equal("wantwrite", w) end
      end
    end
    assert.is_true(table.concat(got) == big)
    assert.has_error(function() sock:trysend(big, #big + 2) end)
    sock:close()
    peer:close()
  end)

  it("tries the next address when one refuses, and fails with the last error", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    local _, port = srv:getsockname()
    srv:close()   -- nothing listens there now
    local sock = core.socket()
    local ok, err, kind = drive(sock, function() return sock:tryconnect("127.0.0.1", tonumber(port)) end)
    assert.is_nil(ok)
    assert.matches("cannot connect to 127.0.0.1 port " .. port, err)
    assert.matches("refused", err)
    assert.are.equal("network", kind)
    assert.are.equal(-1, sock:getfd())
    ok, err, kind = sock:tryconnect("no-such-host.invalid", 25)
    assert.is_nil(ok)
    assert.matches("cannot resolve", err)
    assert.are.equal("network", kind)
  end)

  it("does the TLS handshake in steps, verifying as sslhandshake does", function()
    local ca = servers.ca()
    for _, case in ipairs { { cert = "good" }, { cert = "wrong-host", why = "host name mismatch" } } do
      local h = servers.hostile { { tls = case.cert }, { send = "220 over TLS\r\n" }, { close = true } }
      local sock = core.socket()
      assert.are.equal(1, (drive(sock, function() return sock:tryconnect(h.host, h.port) end)))
      assert.is_true(sock:settls { cafile = ca.cafile })
      local ok, err, kind = drive(sock, function() return sock:tryhandshake("localhost", true) end)
      if case.why then
        assert.is_nil(ok)
        assert.matches("certificate verification", err)
        assert.matches(case.why, err)
        assert.are.equal("tls", kind)
        assert.are.equal(-1, sock:getfd())
      else
        assert.is_true(ok, err)
        assert.are.equal("220 over TLS\r\n", (drive(sock, function() return sock:tryreceive(100) end)))
        local _, e2, k2 = sock:tryhandshake("localhost", true)
        assert.matches("already active", e2)
        assert.are.equal("tls", k2)
      end
      sock:close()
      h:stop()
    end
  end)

  describe("core.waiter", function()
    if not core.waiter then
      pending("no epoll and timerfd on this system")
      return
    end

    it("becomes readable at its deadline, not before", function()
      local w = assert(core.waiter())
      assert.is_true(w:getfd() >= 0)
      assert.is_true(w:arm(nil, nil, 0.15))
      local t0 = now()
      assert.is_false(ready(w:getfd(), "wantread", 0.05))
      assert.is_true(ready(w:getfd(), "wantread", 2))
      local elapsed = now() - t0
      assert.is_true(elapsed >= 0.14 and elapsed < 1, ("fired after %.3f s"):format(elapsed))
      -- arming again forgets the firing
      assert.is_true(w:arm(nil, nil, 30))
      assert.is_false(ready(w:getfd(), "wantread", 0.02))
      assert.is_true(w:arm(nil, nil, 0))   -- a deadline now: at once
      assert.is_true(ready(w:getfd(), "wantread", 0.5))
      assert.is_true(w:arm())               -- nothing at all
      assert.is_false(ready(w:getfd(), "wantread", 0.02))
      w:close()
      w:close()
      assert.are.equal(-1, w:getfd())
    end)

    it("becomes readable when the socket it watches is ready", function()
      local sock, peer = pair()
      local w = assert(core.waiter())
      assert.is_true(w:arm(sock:getfd(), "r", 30))
      assert.is_false(ready(w:getfd(), "wantread", 0.02))
      peer:send("x")
      assert.is_true(ready(w:getfd(), "wantread", 2))
      assert.are.equal("x", sock:tryreceive(10))
      assert.is_false(ready(w:getfd(), "wantread", 0.02))   -- level-triggered: read, not ready
      assert.is_true(w:arm(sock:getfd(), "w", nil))          -- writable at once
      assert.is_true(ready(w:getfd(), "wantread", 0.5))
      -- a new socket under the same descriptor number is watched anew
      local fd = sock:getfd()
      sock:close()
      peer:close()
      local sock2, peer2 = pair()
      if sock2:getfd() == fd then
        assert.is_true(w:arm(sock2:getfd(), "r", 30))
        assert.is_false(ready(w:getfd(), "wantread", 0.02))
        peer2:send("y")
        assert.is_true(ready(w:getfd(), "wantread", 2))
      end
      sock2:close()
      peer2:close()
      w:close()
    end)
  end)
end)
