-- _record.lua: prepended to every store script, after _now.lua (not loaded on its own).
-- A record is one hash with two fields (dtimeout/providers/redis/keys.py):
--   v  JSON array [state, generation, due ms, attempts, lease owner, lease expiry ms, reason,
--      cancel request id, native handle, updated ms, expires ms, orphan ('1' or ''),
--      'OPID:ANSWER' of the last schedule/release/abandon applied ('' if none)]
--   p  the payload's JSON text
-- Why one JSON field and not a field per value: Redis charges per field read or written, and
-- a claim touching thirteen fields cost more than the rest of the script; cjson is C.
-- Absent values are '' (strings) or 0 (numbers), exactly the defaults of model.Timeout.
-- Numbers stay below 1e14 (the store refuses later times), which cjson prints exactly.

local function text(s)
  if s == '' then
    return false
  end
  return s
end

-- The record, or nil. ``with_payload`` also reads the payload (only some answers carry it).
-- The second value tells whether a hash exists at all (an expired one may still be there).
local function load(key, with_payload)
  local raw, p
  if with_payload then
    local got = redis.call('HMGET', key, 'v', 'p')
    raw, p = got[1], got[2]
  else
    raw = redis.call('HGET', key, 'v')
  end
  if not raw then
    return nil, false
  end
  local a = cjson.decode(raw)
  local rec = {s = a[1], g = a[2], d = a[3], a = a[4], o = text(a[5]), l = a[6], r = text(a[7]),
    c = text(a[8]), h = text(a[9]), u = a[10], e = a[11], f = text(a[12]), p = p, e0 = a[11]}
  if a[13] ~= '' then -- 'OPID:ANSWER'
    local cut = string.find(a[13], ':', 1, true)
    rec.q = string.sub(a[13], 1, cut - 1)
    rec.qr = string.sub(a[13], cut + 1)
  end
  -- Past its expiry the record is gone, whether or not Redis evicted it yet (a fake clock runs
  -- ahead of the server's).
  if rec.e > 0 and rec.e <= NOW then
    return nil, true
  end
  return rec, true
end

-- Expiry is applied by every write that moves it (or creates the record), so no transition can
-- leave a record without one: HSET on an existing hash keeps its expiry, and ``e0`` (the
-- expiry the record was loaded with) tells whether it moved.
local function expire(key, at)
  if FAKE then
    redis.call('PEXPIRE', key, math.max(1, at - NOW))
  else
    redis.call('PEXPIREAT', key, I(at))
  end
end

local function save(key, rec, with_payload)
  local v = cjson.encode({rec.s, rec.g, rec.d, rec.a or 0, rec.o or '', rec.l or 0, rec.r or '',
    rec.c or '', rec.h or '', rec.u, rec.e, rec.f or '', rec.q and (rec.q .. ':' .. rec.qr) or ''})
  if with_payload then
    redis.call('HSET', key, 'v', v, 'p', rec.p)
  else
    redis.call('HSET', key, 'v', v)
  end
  if rec.e ~= rec.e0 then
    expire(key, rec.e)
  end
end

-- The reply for one record: answer, the twelve values of keys.RECORD_FIELDS, the payload (or ''
-- when the caller already has it) and one extra value (a superseded handle, or '').
local function reply(answer, rec, with_payload, extra)
  return {answer, rec.s, rec.g, rec.d, rec.a or 0, rec.o or '', rec.l or 0, rec.r or '',
    rec.c or '', rec.h or '', rec.u, rec.e, rec.f or '', (with_payload and rec.p) or '',
    extra or ''}
end

local function holds(rec, gen, owner)
  return rec ~= nil and rec.g == gen and rec.s == 'firing' and rec.o == owner
end
