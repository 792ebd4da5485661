-- queue_cancel.lua: native cancel, removing scheduled messages that nobody holds.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' (unused)
-- ARGV[2]  JSON array of message ids
-- Returns how many were removed. A message a consumer holds right now is left to it: the store
-- has already decided and the claim will drop it.

local due_key, bodies, counts = KEYS[1], KEYS[3], KEYS[4]
local removed = {}
for _, id in ipairs(cjson.decode(ARGV[2])) do
  if redis.call('ZREM', due_key, id) == 1 then
    removed[#removed + 1] = id
  end
end
if #removed > 0 then
  redis.call('HDEL', bodies, unpack(removed))
  redis.call('HDEL', counts, unpack(removed))
end
return #removed
