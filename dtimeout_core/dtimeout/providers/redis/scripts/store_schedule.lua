-- store_schedule.lua: decide_schedule (dtimeout/model.py) for each item.
-- KEYS[i]  the record of item i (P:t:{KIND:KEY})
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [due ms, payload JSON text, retention ms] and, when fused,
--          [.., message id prefix 'KIND:KEY:', body head, body tail]
-- ARGV[3]  id of this call; item i is operation ARGV[3]..'.'..i (a re-send answers as before)
-- ARGV[4]  '1' when fused (fusion.py): KEYS[n+1], KEYS[n+2] are the queue's due zset and body
--          hash, and every answer that needs a message enqueues it here, in the same script:
--          id PREFIX..generation, body HEAD..generation..TAIL, due at the record's due time
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- one reply (see _record.lua) per item; answers created|advanced|extended|refused.

local function schedule(key, due, payload, retention, op)
  local cur = load(key)
  if cur and cur.q == op then
    return reply(cur.qr, cur, false)
  end
  local exp = math.max(due, NOW) + retention
  if cur and cur.s == 'firing' then
    cur.p = redis.call('HGET', key, 'p')
    return reply('refused', cur, true)
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
      return reply('extended', cur, false)
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
    return reply('advanced', cur, false, previous)
  end
  local rec = {s = 'pending', g = (cur and cur.g or 0) + 1, d = due, a = 0, l = 0, u = NOW,
    e = exp, p = payload, q = op, qr = 'created'}
  save(key, rec, true)
  return reply('created', rec, false)
end

local items = cjson.decode(ARGV[2])
local fused = ARGV[4] == '1'
local out = {}
for i = 1, #items do
  local it = items[i]
  local answer = schedule(KEYS[i], it[1], it[2], it[3], ARGV[3] .. '.' .. i)
  out[i] = answer
  if fused and (answer[1] == 'created' or answer[1] == 'advanced') then
    local gen = I(answer[3])
    local id = it[4] .. gen
    redis.call('HSET', KEYS[#items + 2], id, it[5] .. gen .. it[6])
    redis.call('ZADD', KEYS[#items + 1], I(answer[4]), id)
  end
end
return cjson.encode(out)
