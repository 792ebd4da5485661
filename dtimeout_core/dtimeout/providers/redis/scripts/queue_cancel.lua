-- queue_cancel.lua: native cancel, removing scheduled messages that nobody holds.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' (unused)
-- ARGV[2 ..]  message ids
-- Returns how many were removed. A message a consumer holds right now is left to it: the store
-- has already decided and the claim will drop it.

local due_key, bodies, counts = KEYS[1], KEYS[3], KEYS[4]
local n = 0
for b = 2, #ARGV do
  if redis.call('ZREM', due_key, ARGV[b]) == 1 then
    redis.call('HDEL', bodies, ARGV[b])
    redis.call('HDEL', counts, ARGV[b])
    n = n + 1
  end
end
return n
