-- store_complete_ack.lua: the fused settlement (RedisStore.complete_and_ack, fusion.py):
-- decide_complete (dtimeout/model.py) for each lease as store_complete.lua does and, for each one
-- completed, remove its message as queue_ack.lua does. Standalone or sentinel with one shard
-- only (fusion.can_fuse): the queue's keys ride along with the records'.
-- KEYS[1..n]   the record of item i
-- KEYS[n+1..]  the shard's keys: due, inflight, body, count, lease, dead   (keys.ShardKeys.all)
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [generation, owner token, message id, lease token]
-- Returns one JSON array: per item 'completed' or 'lost'. A re-sent call answers 'completed'
-- again (the owner stays on FIRED) and removes nothing more; a lease token that is no longer
-- the message's (its lease expired and another consumer received it) removes nothing: that
-- consumer settles it.

local items = cjson.decode(ARGV[2])
local n = #items
local inflight, bodies, counts, leases = KEYS[n + 2], KEYS[n + 3], KEYS[n + 4], KEYS[n + 5]
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
  if out[i] == 'completed' then
    ids[#ids + 1] = items[i][3]
    tokens[#tokens + 1] = items[i][4]
  end
end
if #ids > 0 then
  local held = redis.call('HMGET', leases, unpack(ids))
  local done = {}
  for j, id in ipairs(ids) do
    if held[j] == tokens[j] then
      done[#done + 1] = id
    end
  end
  if #done > 0 then
    redis.call('ZREM', inflight, unpack(done))
    redis.call('HDEL', bodies, unpack(done))
    redis.call('HDEL', counts, unpack(done))
    redis.call('HDEL', leases, unpack(done))
  end
end
return cjson.encode(out)
