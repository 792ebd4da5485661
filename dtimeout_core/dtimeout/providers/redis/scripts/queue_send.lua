-- queue_send.lua: enqueue messages on one shard of the due index.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead   (keys.ShardKeys.all)
-- ARGV[1]  now ms, or '' (unused; every script takes it first)
-- ARGV[2 + 3*(i-1) ..]  message id, due ms, body   of message i
-- Returns how many messages were written. Re-sending an id is harmless: the body is replaced
-- and, unless a consumer holds it right now, its due time too.

local due_key, inflight, bodies = KEYS[1], KEYS[2], KEYS[3]
local pairs_ = {}
local n = 0
for b = 2, #ARGV, 3 do
  local id = ARGV[b]
  redis.call('HSET', bodies, id, ARGV[b + 2])
  if not redis.call('ZSCORE', inflight, id) then
    pairs_[#pairs_ + 1] = ARGV[b + 1]
    pairs_[#pairs_ + 1] = id
  end
  n = n + 1
end
if #pairs_ > 0 then
  redis.call('ZADD', due_key, unpack(pairs_))
end
return n
