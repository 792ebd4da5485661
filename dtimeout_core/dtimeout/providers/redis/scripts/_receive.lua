-- _receive.lua: prepended to the two receiving scripts, queue_receive.lua and store_receive.lua
-- (not loaded on its own), so both pick messages and tell an idle consumer alike.

-- The earliest due time or lease deadline left in the shard, or -1 when it is empty: a
-- consumer that received nothing sleeps until then.
local function next_due(due_key, inflight)
  local first = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  local leased = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  local next_ = -1
  if first[2] then
    next_ = tonumber(first[2])
  end
  if leased[2] and (next_ < 0 or tonumber(leased[2]) < next_) then
    next_ = tonumber(leased[2])
  end
  return next_
end

-- Pick up to ``max`` messages of the shard (``keys`` = keys.ShardKeys.all) and pass each to
-- ``take(id, body, count_entry, leased_before, n)`` (n = 1, 2, … in hand-out order): messages
-- whose lease expired first (the oldest work comes back as due), then due ones, which leave the
-- due index. Nothing with a due time after now is ever picked. Index entries of a message whose
-- body is gone (removed under us) are dropped. Returns how many were passed to ``take``.
local function pick_due(keys, max, take)
  local due_key, inflight, bodies, counts, leases = keys[1], keys[2], keys[3], keys[4], keys[5]
  local n = 0
  local function hand_out(ids, leased_before)
    if #ids == 0 then
      return
    end
    local found = redis.call('HMGET', bodies, unpack(ids))
    local known = redis.call('HMGET', counts, unpack(ids))
    for i, id in ipairs(ids) do
      if found[i] then
        n = n + 1
        take(id, found[i], known[i], leased_before, n)
      else
        redis.call('ZREM', inflight, id)
        redis.call('HDEL', counts, id)
        redis.call('HDEL', leases, id)
      end
    end
  end
  hand_out(redis.call('ZRANGEBYSCORE', inflight, '-inf', NOW, 'LIMIT', 0, max), true)
  if n < max then
    local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', NOW, 'LIMIT', 0, max - n)
    if #ids > 0 then
      redis.call('ZREM', due_key, unpack(ids))
    end
    hand_out(ids, false)
  end
  return n
end
