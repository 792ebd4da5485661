-- store_cancel.lua: decide_cancel (dtimeout/model.py) for each item.
-- KEYS[i]    the record of item i, i = 1..n
-- ARGV[1]    now ms, or '' to use the server's TIME
-- ARGV[2]    JSON array, item i = the cancel request id (the same id re-sent answers
--            'cancelled') or, when fused, [request id, message id prefix 'KIND:KEY:']
-- ARGV[3]    '1' when fused (RedisStore.cancel_and_withdraw, fusion.py): KEYS[n+1..n+3] are the
--            queue shard's due zset, body hash and count hash, and the message of every item
--            answered 'cancelled' (id PREFIX..generation) is removed as queue_cancel.lua would,
--            unless a consumer holds it (its claim then finds the record cancelled).
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- per item {answer, generation or '', handle or ''}; answers cancelled|too_late|
-- not_found|already_cancelled. not_found writes nothing: no marker blocks a later schedule.

local items = cjson.decode(ARGV[2])
local fused = ARGV[3] == '1'
local n = #items
local out = {}
local withdraw = {}
for i = 1, n do
  local key, rid = KEYS[i], items[i]
  if fused then
    rid = items[i][1]
  end
  local cur = load(key)
  if not cur then
    out[i] = {'not_found', '', ''}
  elseif cur.s == 'pending' then
    cur.s = 'cancelled'
    cur.r = 'cancelled'
    cur.c = rid
    cur.u = NOW
    save(key, cur, false)
    out[i] = {'cancelled', I(cur.g), cur.h or ''}
  elseif cur.s == 'cancelled' then
    out[i] = {cur.c == rid and 'cancelled' or 'already_cancelled', I(cur.g), cur.h or ''}
  else
    -- FIRING, FIRED, and DEAD (the handler ran and failed for good)
    out[i] = {'too_late', I(cur.g), cur.h or ''}
  end
  if fused and out[i][1] == 'cancelled' then
    withdraw[#withdraw + 1] = items[i][2] .. out[i][2]
  end
end
if #withdraw > 0 then
  local due_key, bodies, counts = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
  local removed = {}
  for _, id in ipairs(withdraw) do
    if redis.call('ZREM', due_key, id) == 1 then
      removed[#removed + 1] = id
    end
  end
  if #removed > 0 then
    redis.call('HDEL', bodies, unpack(removed))
    redis.call('HDEL', counts, unpack(removed))
  end
end
return cjson.encode(out)
