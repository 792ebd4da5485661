-- store_schedule.lua: decide_schedule (dtimeout/model.py) for each item.
-- KEYS[i]  the record of item i (P:t:{KIND:KEY}), i = 1..n
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [due ms, payload JSON text, retention ms, index of the item in
--          the caller's batch] and, when fused, [.., message id prefix 'KIND:KEY:', body head
--          '{"v":1,"kind":…,"key":…,"generation":']
-- ARGV[3]  id of the caller's batch; item i is operation ARGV[3]..'.'..index (a re-send answers
--          as before; a batch cut into several calls still gives every item its own id)
-- ARGV[4]  '1' when fused (RedisStore.schedule_and_send, fusion.py): KEYS[n+1..n+4] are the
--          queue shard's due zset, inflight zset, body hash and count hash, and every answer
--          that needs a message enqueues it here, as queue_send.lua would: id PREFIX..generation,
--          body HEAD..generation..',"due_at":'..due..',"payload":'..payload..'}' (the model's
--          bytes: fusion.body_head), due at the record's due time; an id a consumer holds keeps
--          its lease. An advanced item also removes the superseded generation's message, as
--          queue_cancel.lua would. A re-sent call (same operation) enqueues nothing: its first
--          run did. Needs Redis >= 6.2 (ZMSCORE).
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- one reply (see _record.lua) per item; answers created|advanced|extended|refused. A fresh
-- record (created, not a re-sent call) answers only {'created', generation, updated, expires}:
-- the caller knows the rest.

-- The reply, whether this call changed anything (false when it re-answers a re-send), and
-- the record as written.
local function schedule(key, due, payload, retention, op)
  local cur = load(key)
  if cur and cur.q == op then
    return reply(cur.qr, cur, false), false
  end
  local exp = math.max(due, NOW) + retention
  if cur and cur.s == 'firing' then
    cur.p = redis.call('HGET', key, 'p')
    return reply('refused', cur, true), false
  end
  if cur and cur.s == 'pending' then
    cur.p = payload
    cur.u = NOW
    cur.e = math.max(cur.e, exp)
    cur.q = op
    if due >= cur.d then
      -- later (or the same time): one write, no message; the old message re-queues itself
      cur.d = due
      cur.qr = 'extended'
      save(key, cur, true)
      return reply('extended', cur, false), true
    end
    -- earlier: a new generation and a new message; the old one goes stale
    local previous = cur.h
    cur.g = cur.g + 1
    cur.d = due
    cur.a = 0
    cur.o = false
    cur.l = 0
    cur.r = false
    cur.h = false
    cur.qr = 'advanced'
    save(key, cur, true)
    return reply('advanced', cur, false, previous), true, cur
  end
  local rec = {s = 'pending', g = (cur and cur.g or 0) + 1, d = due, a = 0, l = 0, u = NOW,
    e = exp, p = payload, q = op, qr = 'created'}
  save(key, rec, true)
  -- everything else of a fresh record is known to the caller: a short reply
  return {'created', rec.g, rec.u, rec.e}, true, rec
end

local items = cjson.decode(ARGV[2])
local n = #items
local fused = ARGV[4] == '1'
local out = {}
-- Fused messages are written after the loop, one command per key for the whole call: Redis
-- charges per command far more than per element.
local ids, bodies, dues, superseded = {}, {}, {}, {}
for i = 1, n do
  local it = items[i]
  local answer, changed, rec = schedule(KEYS[i], it[1], it[2], it[3], ARGV[3] .. '.' .. it[4])
  out[i] = answer
  local result = answer[1]
  if fused and changed and (result == 'created' or result == 'advanced') then
    local gen, due = I(rec.g), I(rec.d)
    local id = it[5] .. gen
    ids[#ids + 1] = id
    dues[#dues + 1] = due
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = it[6] .. gen .. ',"due_at":' .. due .. ',"payload":' .. it[2] .. '}'
    if result == 'advanced' then
      superseded[#superseded + 1] = it[5] .. I(rec.g - 1)
    end
  end
end
if #ids > 0 then
  local due_key, inflight, body_key, counts = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
  redis.call('HSET', body_key, unpack(bodies))
  local held = redis.call('ZMSCORE', inflight, unpack(ids))
  local pairs_ = {}
  for j = 1, #ids do
    if not held[j] then
      pairs_[#pairs_ + 1] = dues[j]
      pairs_[#pairs_ + 1] = ids[j]
    end
  end
  if #pairs_ > 0 then
    redis.call('ZADD', due_key, unpack(pairs_))
  end
  for _, old in ipairs(superseded) do
    if redis.call('ZREM', due_key, old) == 1 then
      redis.call('HDEL', body_key, old)
      redis.call('HDEL', counts, old)
    end
  end
end
return cjson.encode(out)
