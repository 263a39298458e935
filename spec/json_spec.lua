-- mailer.json, the queue's metadata format: round trips, strictness, and
-- damaged input (every truncation of a real record) returning nil, err
-- rather than raising.
local json = require "mailer.json"

describe("mailer.json", function()
  it("round-trips the queue's records, keeping empty arrays arrays", function()
    local v = { id = "x", to = json.array { "a@example.com" }, refused = json.array(), n = 3, t = 1796441094.25,
                ok = true, server = { host = "h", tls = {} }, history = json.array { { code = 451 } } }
    local text = json.encode(v)
    assert.are.equal('{"history":[{"code":451}],"id":"x","n":3,"ok":true,"refused":[],' ..
      '"server":{"host":"h","tls":{}},"t":1796441094.25,"to":["a@example.com"]}', text)
    assert.are.equal(text, json.encode(assert(json.decode(text))))
  end)

  it("writes valid JSON whatever the bytes: escapes, UTF-8 kept, invalid UTF-8 replaced", function()
    assert.are.equal('"a\\"b\\\\c\\n\\u0000\\u001f"', json.encode("a\"b\\c\n\0\31"))
    assert.are.equal('"Gr\195\188\195\159e"', json.encode("Gr\195\188\195\159e"))
    assert.are.equal('"x\239\191\189\239\191\189y"', json.encode("x\255\192y"))
    assert.are.equal('"' .. ("\239\191\189"):rep(3) .. '"', json.encode("\237\160\128"))   -- a surrogate
    assert.are.equal("\240\159\152\128", json.decode('"\\ud83d\\ude00"'))
    assert.are.equal("null", json.encode(0 / 0))
  end)

  it("refuses what is not one strict JSON value", function()
    for _, bad in ipairs { "", "{", "[1,]", "{\"a\":1,}", "01", "'x'", "[1] 2", "{a:1}", "\"\\x\"",
                           "\"\\ud800\"", "\"a\nb\"", "nul", string.rep("[", 100) .. string.rep("]", 100) } do
      local v, err = json.decode(bad)
      assert.is_nil(v, bad)
      assert.is_string(err, bad)
    end
  end)

  it("returns nil, err for every truncation of a record, never raising", function()
    local text = json.encode { version = 1, id = "20261205T000000000000Z-abc", from = "a@example.com",
      to = json.array { "b@example.com", "c@example.com" }, last_error = { code = 451, message = "try later" } }
    for n = 0, #text - 1 do
      local v, err = json.decode(text:sub(1, n))
      assert.is_nil(v)
      assert.is_string(err)
    end
  end)
end)
