-- store_release.lua: decide_release (dtimeout/model.py): the handler failed.
-- KEYS[1]  the record
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2..8]  generation, owner token, backoff ms, max attempts, error text, retention ms,
--             operation id (a re-send answers as the first call did)
-- Returns one reply (see _record.lua) as JSON; answers released|dead|lost.

local key = KEYS[1]
local gen, owner, backoff = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local max_attempts, err, retention, op = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local cur = load(key, true)
if cur and cur.q == op then
  return cjson.encode(reply(cur.qr, cur, true))
end
if not holds(cur, gen, owner) then
  if cur then
    return cjson.encode(reply('lost', cur, true))
  end
  return cjson.encode({'lost'})
end
cur.r = err
cur.o = false
cur.l = 0
cur.u = NOW
cur.q = op
if cur.a >= max_attempts then
  cur.s = 'dead'
  cur.qr = 'dead'
else
  cur.s = 'pending'
  cur.d = NOW + backoff
  cur.e = math.max(cur.e, cur.d + retention)
  cur.qr = 'released'
end
save(key, cur, false)
return cjson.encode(reply(cur.qr, cur, true))
