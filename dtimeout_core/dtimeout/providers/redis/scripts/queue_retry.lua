-- queue_retry.lua: put a delivered message back, due again after a delay (not yet due, or the
-- handler failed). The delivery is not counted: the message was not lost, only early.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2..4]  message id, lease token, delay ms
-- Returns 1, or 0 when the token is not the message's any more.

local due_key, inflight, counts, leases = KEYS[1], KEYS[2], KEYS[4], KEYS[5]
local id, token = ARGV[2], ARGV[3]
if redis.call('HGET', leases, id) ~= token then
  return 0
end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
redis.call('ZADD', due_key, I(NOW + tonumber(ARGV[4])), id)
-- a leased message has at least one delivery (absent count: exactly one; see keys.py)
local before = tonumber(redis.call('HGET', counts, id) or 1) - 1
if before <= 0 then
  redis.call('HDEL', counts, id)
else
  redis.call('HSET', counts, id, before)
end
return 1
