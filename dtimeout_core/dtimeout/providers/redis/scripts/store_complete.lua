-- store_complete.lua: decide_complete (dtimeout/model.py) for each lease.
-- KEYS[i]  the record of item i, i = 1..n
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [generation, owner token] or, when fused, [generation, owner
--          token, message id, lease token]
-- ARGV[3]  '1' when fused (RedisStore.complete_and_ack, fusion.py): KEYS[n+1..n+6] are the
--          queue shard's keys (due, inflight, body, count, lease, dead: keys.ShardKeys.all), and
--          the message of every item answered 'completed' is removed as queue_ack.lua would,
--          unless its lease token is no longer the message's (its lease expired and another
--          consumer received it: that consumer settles it).
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- per item 'completed' or 'lost'. The owner stays on FIRED so a re-sent complete is
-- recognised and answered 'completed' again (and, fused, removes nothing more).

local items = cjson.decode(ARGV[2])
local n = #items
local fused = ARGV[3] == '1'
local out = {}
local ids, tokens = {}, {}
for i = 1, n do
  local gen, owner = items[i][1], items[i][2]
  local cur = load(KEYS[i])
  if cur and cur.g == gen and cur.s == 'fired' and cur.o == owner then
    out[i] = 'completed'
  elseif holds(cur, gen, owner) then
    cur.s = 'fired'
    cur.l = 0
    cur.u = NOW
    save(KEYS[i], cur, false)
    out[i] = 'completed'
  else
    out[i] = 'lost'
  end
  if fused and out[i] == 'completed' then
    ids[#ids + 1] = items[i][3]
    tokens[#tokens + 1] = items[i][4]
  end
end
if #ids > 0 then
  ack({unpack(KEYS, n + 1, n + 6)}, ids, tokens)
end
return cjson.encode(out)
