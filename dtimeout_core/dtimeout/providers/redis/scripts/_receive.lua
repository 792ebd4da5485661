-- _receive.lua: prepended to the two receiving scripts, queue_receive.lua and store_receive.lua
-- (not loaded on its own), so both tell an idle consumer the same thing.

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
