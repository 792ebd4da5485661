-- _ack.lua: prepended to queue_ack.lua and store_complete.lua (fused), not loaded on its own,
-- so a settled message is removed the same way by both.

-- Remove for good each message ``ids[i]`` whose current lease token is still ``tokens[i]``
-- (``keys`` = the shard's keys, keys.ShardKeys.all); returns how many were removed. A token
-- that is no longer the message's (its lease expired and another consumer received it)
-- removes nothing: that consumer settles it. One command per key for the whole batch.
local function ack(keys, ids, tokens)
  if #ids == 0 then
    return 0
  end
  local inflight, bodies, counts, leases = keys[2], keys[3], keys[4], keys[5]
  local held = redis.call('HMGET', leases, unpack(ids))
  local done = {}
  for i, id in ipairs(ids) do
    if held[i] == tokens[i] then
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
end
