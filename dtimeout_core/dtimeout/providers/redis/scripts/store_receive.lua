-- store_receive.lua: the fused consumer step (RedisStore.receive_and_claim, fusion.py): lease up
-- to N due messages of the queue's only shard as queue_receive.lua does and, in the same call,
-- claim each one's record as store_claim.lua does (decide_claim, dtimeout/model.py).
-- Why a store script touches the queue and records it was not given as KEYS: fusion is only
-- offered on a standalone or sentinel server with one shard (fusion.can_fuse), where Redis lets
-- a script reach any key; each record's key is built here from its message's id
-- (ARGV[10]..KIND..':'..KEY..'}', keys.record_key), which a cluster would refuse.
-- KEYS[1..6]  the shard's keys: due, inflight, body, count, lease, dead   (keys.ShardKeys.all)
-- KEYS[7]     this call's memo (keys.ShardKeys.memo): the ids it leased, kept for a lease, so a
--             re-sent call (same token, after a lost reply) answers again and leases nothing more
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  N, the most messages to hand out
-- ARGV[3]  lease ms, of the message and of the record alike
-- ARGV[4]  token of this call; message i gets the lease token ARGV[4]..':'..i
-- ARGV[5]  owner prefix; the claim of message i is owned by ARGV[5]..i
-- ARGV[6..8]  max attempts, orphan policy ('fire'|'drop'), retention ms
-- ARGV[9]  JSON array of the kinds the consumer has handlers for
-- ARGV[10] record key prefix 'P:t:{'
-- ARGV[11] message body head up to the kind: '{"v":1,"kind":' (fusion.body_head)
-- Returns one JSON array {now, next, item, item, …}; ``next`` as in queue_receive.lua. Items:
--   {'c', id, token, deliveries, generation, due ms, attempts, orphan '1'|'', payload JSON}
--       claimed: the record is FIRING under this call's owner; the message stays leased
--   {'p', id, body, deliveries, token}
--       leased only, for the consumer's usual path (decode, claim, route): a body that is not
--       byte for byte what our writers produce (TimeoutMessage.encode) around the record's own
--       payload (so a hand-made or damaged body is judged by Python), a kind without handler,
--       an orphan (no record) the consumer may fire — it needs the payload, which only a
--       decoded body gives exactly. Nothing was written for it besides the lease.
--   {'d', id, answer}  stale|cancelled|fired|missing: the message was removed (queue_ack.lua)
--   {'r', id, answer}  not_due|busy: due again when the record is (+50 ms after a busy lease),
--       at least 10 ms on, not counted as a delivery (queue_retry.lua, Consumer._route)
--   {'x', id, reason}  dead: moved to the dead letters with the reason (queue_dead.lua)

local due_key, inflight, bodies, counts, leases, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local memo = KEYS[7]
local max = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local deadline = I(NOW + lease_ms)
local token, owner_prefix = ARGV[4], ARGV[5]
local max_attempts, policy, retention = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local kinds = {}
for _, k in ipairs(cjson.decode(ARGV[9])) do
  kinds[k] = true
end
local record_prefix, head_v = ARGV[10], ARGV[11]
local MIN_REQUEUE_MS, BUSY_EXTRA_MS = 10, 50

-- Generation, record key and payload text of a message whose body is exactly what
-- TimeoutMessage.encode writes for its id, else nil (the consumer's path decides). The payload
-- text is checked against the record's in claim().
local function parse(id, body)
  local colon = string.find(id, ':', 1, true)
  local gen_s = string.match(id, ':([1-9]%d*)$')
  if not colon or not gen_s or #gen_s > 15 then
    return nil
  end
  local kind = string.sub(id, 1, colon - 1)
  local key = string.sub(id, colon + 1, #id - #gen_s - 1)
  -- identities JSON writes without escapes only (anything else is rare: let Python judge it)
  if kind == '' or key == '' or not kinds[kind] or string.find(id, '[%z\1-\31"\\]') then
    return nil
  end
  local head = head_v .. '"' .. kind .. '","key":"' .. key .. '","generation":' .. gen_s
    .. ',"due_at":'
  if string.sub(body, 1, #head) ~= head then
    return nil
  end
  local due_s, payload = string.match(body, '^(%d+),"payload":(.*)}$', #head + 1)
  if not due_s or #due_s > 15 or (#due_s > 1 and string.sub(due_s, 1, 1) == '0') then
    return nil
  end
  return tonumber(gen_s), record_prefix .. kind .. ':' .. key .. '}', payload
end

-- decide_claim as store_claim.lua (_claim.lua), for a message without its payload: nil when
-- there is no record and orphans fire (the consumer claims it with the decoded body's payload),
-- or when the body's payload is not the record's (a body we did not write: Python judges it).
local function claim(key, gen, owner, payload)
  local cur = load(key, true)
  if not cur then
    if policy == 'drop' then
      return 'missing', nil
    end
    return nil
  end
  if cur.p ~= payload then -- also for another generation: a malformed body is dead either way
    return nil
  end
  return claim_record(key, cur, gen, owner, lease_ms, max_attempts, retention), cur
end

local out = {NOW, -1}
local n = 0
local kept = {} -- {id, n, …}: what this call leased (the memo)
local lease_pairs, token_pairs, count_pairs = {}, {}, {}
local unleased, removed, due_pairs, uncounted = {}, {}, {}, {}

-- One delivered message: decide, and note what becomes of it. ``known`` is its count entry,
-- ``held`` whether it was in the inflight index (an expired lease, or this call's own on a
-- re-send), ``fresh`` whether this call leases it now (false on a re-send: leased already).
local function deliver(id, body, known, held, fresh, i)
  local before = known and tonumber(known) or (held and 1 or 0) -- deliveries so far
  local count = fresh and before + 1 or before
  local tok = token .. ':' .. i
  local gen, rkey, payload = parse(id, body)
  local answer, rec
  if gen then
    answer, rec = claim(rkey, gen, owner_prefix .. i, payload)
  end
  if answer == 'claimed' then
    out[#out + 1] = {'c', id, tok, count, rec.g, rec.d, rec.a, rec.f or '', rec.p or 'null'}
  elseif not answer then
    out[#out + 1] = {'p', id, body, count, tok}
  else
    if held then
      unleased[#unleased + 1] = id
    end
    if answer == 'not_due' or answer == 'busy' then
      local until_ = answer == 'not_due' and rec.d or rec.l + BUSY_EXTRA_MS
      due_pairs[#due_pairs + 1] = I(NOW + math.max(MIN_REQUEUE_MS, until_ - NOW))
      due_pairs[#due_pairs + 1] = id
      local waiting = fresh and before or before - 1 -- this delivery is not counted
      if waiting > 0 then
        count_pairs[#count_pairs + 1] = id
        count_pairs[#count_pairs + 1] = waiting
      else
        uncounted[#uncounted + 1] = id
      end
      out[#out + 1] = {'r', id, answer}
    else
      removed[#removed + 1] = id
      if answer == 'dead' then
        local reason = (rec and rec.r) or 'attempts exhausted'
        redis.call('HSET', dead, id,
          cjson.encode({body = body, reason = reason, at = NOW, deliveries = count}))
        out[#out + 1] = {'x', id, reason}
      else
        out[#out + 1] = {'d', id, answer}
      end
    end
    return
  end
  kept[#kept + 1] = id
  kept[#kept + 1] = i
  if fresh then
    lease_pairs[#lease_pairs + 1] = deadline
    lease_pairs[#lease_pairs + 1] = id
    token_pairs[#token_pairs + 1] = id
    token_pairs[#token_pairs + 1] = tok
    if count > 1 then
      count_pairs[#count_pairs + 1] = id
      count_pairs[#count_pairs + 1] = count
    end
  end
end

local memo_raw = redis.call('GET', memo)
if memo_raw then
  -- a re-sent call: answer again for what the first run leased and this call still holds
  local first = cjson.decode(memo_raw)
  for j = 1, #first, 2 do
    local id, i = first[j], first[j + 1]
    if redis.call('HGET', leases, id) == token .. ':' .. i then
      local body = redis.call('HGET', bodies, id)
      if body then
        deliver(id, body, redis.call('HGET', counts, id), true, false, i)
      end
    end
  end
else
  n = pick_due(KEYS, max, function(id, body, known, held, i)
    deliver(id, body, known, held, true, i)
  end)
end

-- one command per key for the whole call: Redis charges per command
if #unleased > 0 then
  redis.call('ZREM', inflight, unpack(unleased))
  redis.call('HDEL', leases, unpack(unleased))
end
if #removed > 0 then
  redis.call('HDEL', bodies, unpack(removed))
  redis.call('HDEL', counts, unpack(removed))
end
if #uncounted > 0 then
  redis.call('HDEL', counts, unpack(uncounted))
end
if #due_pairs > 0 then
  redis.call('ZADD', due_key, unpack(due_pairs))
end
if #lease_pairs > 0 then
  redis.call('ZADD', inflight, unpack(lease_pairs))
  redis.call('HSET', leases, unpack(token_pairs))
end
if #count_pairs > 0 then
  redis.call('HSET', counts, unpack(count_pairs))
end
if #kept > 0 and not memo_raw then
  redis.call('SET', memo, cjson.encode(kept), 'PX', I(lease_ms))
end
if n == 0 and not memo_raw then
  out[2] = next_due(due_key, inflight)
end
return cjson.encode(out)
