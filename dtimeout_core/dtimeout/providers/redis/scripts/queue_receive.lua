-- queue_receive.lua: lease up to N due messages of one shard.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  N, the most messages to hand out
-- ARGV[3]  lease ms
-- ARGV[4]  token prefix of this call; message i gets the lease token ARGV[4]..':'..i
-- Returns {now, next, id, body, deliveries, token, id, body, …}. ``next`` is the earliest due
-- time or lease deadline left in the shard (-1 when empty): the caller sleeps until then.
-- Messages whose lease expired are handed out first, then due ones; nothing with a due time
-- after now is ever handed out.

local due_key, inflight, bodies, counts, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max = tonumber(ARGV[2])
local deadline = I(NOW + tonumber(ARGV[3]))
local out = {NOW, -1}
local n = 0

local function hand_out(ids)
  if #ids == 0 then
    return
  end
  local found = redis.call('HMGET', bodies, unpack(ids))
  local lease_pairs, token_pairs = {}, {}
  for i, id in ipairs(ids) do
    if found[i] then
      n = n + 1
      local token = ARGV[4] .. ':' .. n
      lease_pairs[#lease_pairs + 1] = deadline
      lease_pairs[#lease_pairs + 1] = id
      token_pairs[#token_pairs + 1] = id
      token_pairs[#token_pairs + 1] = token
      local count = redis.call('HINCRBY', counts, id, 1)
      out[#out + 1] = id
      out[#out + 1] = found[i]
      out[#out + 1] = count
      out[#out + 1] = token
    else
      -- no body (removed under us): drop the dangling index entries
      redis.call('ZREM', inflight, id)
      redis.call('HDEL', counts, id)
      redis.call('HDEL', leases, id)
    end
  end
  if #lease_pairs > 0 then
    redis.call('ZADD', inflight, unpack(lease_pairs))
    redis.call('HSET', leases, unpack(token_pairs))
  end
end

-- expired leases first: the oldest work comes back as due
hand_out(redis.call('ZRANGEBYSCORE', inflight, '-inf', NOW, 'LIMIT', 0, max))
if n < max then
  local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', NOW, 'LIMIT', 0, max - n)
  if #ids > 0 then
    redis.call('ZREM', due_key, unpack(ids))
  end
  hand_out(ids)
end
if n == 0 then
  local first = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  local leased = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  local next_ = -1
  if first[2] then
    next_ = tonumber(first[2])
  end
  if leased[2] and (next_ < 0 or tonumber(leased[2]) < next_) then
    next_ = tonumber(leased[2])
  end
  out[2] = next_
end
return out
