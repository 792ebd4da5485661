-- queue_receive.lua: lease up to N due messages of one shard.
-- KEYS     the shard's keys: due, inflight, body, count, lease, dead
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  N, the most messages to hand out
-- ARGV[3]  lease ms
-- ARGV[4]  token prefix of this call; message i gets the lease token ARGV[4]..':'..i
-- Returns one JSON array {now, next, id, body, deliveries, token, id, body, …} (one bulk string:
-- redis-py parses a nested RESP reply element by element in Python, four per message, which
-- cost more than the rest of a receive). ``next`` is the earliest due time or lease deadline
-- left in the shard (-1 when empty): the caller sleeps until then.
-- Messages whose lease expired are handed out first, then due ones; nothing with a due time
-- after now is ever handed out.

local due_key, inflight, counts, leases = KEYS[1], KEYS[2], KEYS[4], KEYS[5]
local max = tonumber(ARGV[2])
local deadline = I(NOW + tonumber(ARGV[3]))
local out = {NOW, -1}

-- Deliveries so far live in the count hash only when not implied (keys.py): absent means 0 for
-- a waiting message and 1 for a leased one, so a first delivery writes no count at all.
local lease_pairs, token_pairs, count_pairs = {}, {}, {}
local n = pick_due(KEYS, max, function(id, body, known, leased_before, i)
  local token = ARGV[4] .. ':' .. i
  local count = (known and tonumber(known) or (leased_before and 1 or 0)) + 1
  if count > 1 then
    count_pairs[#count_pairs + 1] = id
    count_pairs[#count_pairs + 1] = count
  end
  lease_pairs[#lease_pairs + 1] = deadline
  lease_pairs[#lease_pairs + 1] = id
  token_pairs[#token_pairs + 1] = id
  token_pairs[#token_pairs + 1] = token
  out[#out + 1] = id
  out[#out + 1] = body
  out[#out + 1] = count
  out[#out + 1] = token
end)
if #lease_pairs > 0 then
  redis.call('ZADD', inflight, unpack(lease_pairs))
  redis.call('HSET', leases, unpack(token_pairs))
end
if #count_pairs > 0 then
  redis.call('HSET', counts, unpack(count_pairs))
end
if n == 0 then
  out[2] = next_due(due_key, inflight)
end
return cjson.encode(out)
