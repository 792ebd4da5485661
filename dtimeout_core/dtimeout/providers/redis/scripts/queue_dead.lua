-- queue_dead.lua: move a delivered message to the shard's dead letters, with the reason.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2..4]  message id, lease token, reason
-- Returns 1, or 0 when the token is not the message's any more (someone else holds it).
-- The dead letter is JSON {body, reason, at, deliveries}.

local due_key, inflight, bodies, counts, leases, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local id = ARGV[2]
if redis.call('HGET', leases, id) ~= ARGV[3] then
  return 0
end
local body = redis.call('HGET', bodies, id) or ''
local deliveries = tonumber(redis.call('HGET', counts, id) or 1) -- leased: absent means 1
redis.call('HSET', dead, id,
  cjson.encode({body = body, reason = ARGV[4], at = NOW, deliveries = deliveries}))
redis.call('ZREM', inflight, id)
redis.call('ZREM', due_key, id)
redis.call('HDEL', bodies, id)
redis.call('HDEL', counts, id)
redis.call('HDEL', leases, id)
return 1
