-- queue_ack.lua: remove delivered messages for good.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' (unused)
-- ARGV[2]  JSON array [id, lease token, id, lease token, …] (one argument: redis-py encodes
--          each argument in Python)
-- Returns how many were removed. A token that is no longer the message's (its lease expired and
-- another consumer received it) removes nothing: that consumer settles it. One command per key
-- for the whole batch, not per message: Redis charges per call.

local inflight, bodies, counts, leases = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local args = cjson.decode(ARGV[2])
local ids = {}
for b = 1, #args, 2 do
  ids[#ids + 1] = args[b]
end
if #ids == 0 then
  return 0
end
local held = redis.call('HMGET', leases, unpack(ids))
local done = {}
for i, id in ipairs(ids) do
  if held[i] == args[2 * i] then
    done[#done + 1] = id
  end
end
if #done > 0 then
  redis.call('ZREM', inflight, unpack(done))
  redis.call('HDEL', bodies, unpack(done))
  redis.call('HDEL', counts, unpack(done))
  redis.call('HDEL', leases, unpack(done))
end
return #done
