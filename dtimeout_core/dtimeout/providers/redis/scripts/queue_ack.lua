-- queue_ack.lua: remove delivered messages for good.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' (unused)
-- ARGV[2 + 2*(i-1) ..]  message id, lease token   of message i
-- Returns how many were removed. A token that is no longer the message's (its lease expired and
-- another consumer received it) removes nothing: that consumer settles it.

local inflight, bodies, counts, leases = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local n = 0
for b = 2, #ARGV, 2 do
  local id = ARGV[b]
  if redis.call('HGET', leases, id) == ARGV[b + 1] then
    redis.call('ZREM', inflight, id)
    redis.call('HDEL', bodies, id)
    redis.call('HDEL', counts, id)
    redis.call('HDEL', leases, id)
    n = n + 1
  end
end
return n
