-- _record.lua: prepended to every store script, after _now.lua (not loaded on its own).
-- A record is one hash (field names in dtimeout/providers/redis/keys.py):
--   s state  g generation  d due ms  p payload JSON  a attempts  o lease owner  l lease expiry ms
--   r reason  c cancel request id  h native handle  u updated ms  e expires ms  f orphan ('1')
--   q 'OPID:ANSWER' of the last schedule/release/abandon applied (a re-send gets that answer)
-- Absent optional fields mean None / 0 / false, exactly like the defaults of model.Timeout.

local FIELDS = {'s', 'g', 'd', 'a', 'o', 'l', 'r', 'c', 'h', 'u', 'e', 'f'}
local REQUIRED = {s = true, g = true, d = true, u = true, e = true}

-- The record, or nil. ``with_payload`` also reads the payload (only some answers carry it).
-- The second value tells whether a hash exists at all (an expired one may still be there).
local function load(key, with_payload)
  local v
  if with_payload then
    v = redis.call('HMGET', key, 's', 'g', 'd', 'a', 'o', 'l', 'r', 'c', 'h', 'u', 'e', 'f', 'q',
      'p')
  else
    v = redis.call('HMGET', key, 's', 'g', 'd', 'a', 'o', 'l', 'r', 'c', 'h', 'u', 'e', 'f', 'q')
  end
  if not v[1] then
    return nil, false
  end
  local rec = {
    s = v[1], g = tonumber(v[2]), d = tonumber(v[3]), a = tonumber(v[4] or 0), o = v[5],
    l = tonumber(v[6] or 0), r = v[7], c = v[8], h = v[9], u = tonumber(v[10] or 0),
    e = tonumber(v[11] or 0), f = v[12], p = v[14],
  }
  rec.orig = {s = rec.s, g = rec.g, d = rec.d, a = rec.a, o = rec.o, l = rec.l, r = rec.r,
    c = rec.c, h = rec.h, u = rec.u, e = rec.e, f = rec.f}
  if v[13] then -- 'OPID:ANSWER'
    local cut = string.find(v[13], ':', 1, true)
    rec.q = string.sub(v[13], 1, cut - 1)
    rec.raw_q = rec.q
    rec.qr = string.sub(v[13], cut + 1)
  end
  -- Past its expiry the record is gone, whether or not Redis evicted it yet (a fake clock runs
  -- ahead of the server's).
  if rec.e > 0 and rec.e <= NOW then
    return nil, true
  end
  return rec, true
end

-- Expiry is re-applied by every write, so no transition can leave a record without one.
local function expire(key, at)
  if FAKE then
    redis.call('PEXPIRE', key, math.max(1, at - NOW))
  else
    redis.call('PEXPIREAT', key, I(at))
  end
end

-- Write what changed since load (everything for a fresh record): optional fields that became
-- unset are deleted, so an absent field always means None / 0 / false. Comparing values before
-- formatting them matters: string.format is most of a small script's time.
local function save(key, rec, with_payload)
  local orig = rec.orig or {}
  local set, del = {}, {}
  for _, name in ipairs(FIELDS) do
    local value = rec[name]
    if value ~= orig[name] then
      if REQUIRED[name] or (value and value ~= '' and value ~= 0) then
        set[#set + 1] = name
        set[#set + 1] = type(value) == 'number' and I(value) or value
      elseif orig[name] and orig[name] ~= '' and orig[name] ~= 0 then
        del[#del + 1] = name
      end
    end
  end
  if rec.q and rec.q ~= (rec.raw_q or false) then
    set[#set + 1] = 'q'
    set[#set + 1] = rec.q .. ':' .. rec.qr
  end
  if with_payload then
    set[#set + 1] = 'p'
    set[#set + 1] = rec.p
  end
  if #set > 0 then
    redis.call('HSET', key, unpack(set))
  end
  if #del > 0 then
    redis.call('HDEL', key, unpack(del))
  end
  expire(key, rec.e)
end

-- The reply for one record: answer, the twelve fields of keys.RECORD_FIELDS, the payload (or ''
-- when the caller already has it) and one extra value (a superseded handle, or ''). cjson prints
-- 14 significant digits, exact for every epoch ms before the year 5138; larger go as text.
local function N(n)
  if n < 1e14 then
    return n
  end
  return I(n)
end

local function reply(answer, rec, with_payload, extra)
  return {answer, rec.s, N(rec.g), N(rec.d), N(rec.a), rec.o or '', N(rec.l), rec.r or '',
    rec.c or '', rec.h or '', N(rec.u), N(rec.e), rec.f or '', (with_payload and rec.p) or '',
    extra or ''}
end

local function holds(rec, gen, owner)
  return rec ~= nil and rec.g == gen and rec.s == 'firing' and rec.o == owner
end
