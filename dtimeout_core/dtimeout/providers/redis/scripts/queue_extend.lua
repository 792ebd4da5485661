-- queue_extend.lua: keep a delivery leased for longer (a long handler's heartbeat).
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2..4]  message id, lease token, lease ms
-- Returns 1, or 0 when the token is not the message's any more.

local inflight, leases = KEYS[2], KEYS[5]
if redis.call('HGET', leases, ARGV[2]) ~= ARGV[3] then
  return 0
end
redis.call('ZADD', inflight, 'XX', I(NOW + tonumber(ARGV[4])), ARGV[2])
return 1
