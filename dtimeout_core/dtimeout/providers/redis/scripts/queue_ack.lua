-- queue_ack.lua: remove delivered messages for good.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' (unused)
-- ARGV[2]  JSON array [id, lease token, id, lease token, …] (one argument: redis-py encodes
--          each argument in Python)
-- Returns how many were removed. A token that is no longer the message's (its lease expired and
-- another consumer received it) removes nothing: that consumer settles it. One command per key
-- for the whole batch, not per message: Redis charges per call.

local args = cjson.decode(ARGV[2])
local ids, tokens = {}, {}
for b = 1, #args, 2 do
  ids[#ids + 1] = args[b]
  tokens[#tokens + 1] = args[b + 1]
end
return ack(KEYS, ids, tokens)
