-- _record.lua: prepended to every store script, after _now.lua (not loaded on its own).
-- A record is one hash (field names in dtimeout/providers/redis/keys.py):
--   s state  g generation  d due ms  p payload JSON  a attempts  o lease owner  l lease expiry ms
--   r reason  c cancel request id  h native handle  u updated ms  e expires ms  f orphan ('1')
--   q id of the last schedule/release/abandon applied  qr its answer (re-sends get the same)
-- Absent optional fields mean None / 0 / false, exactly like the defaults of model.Timeout.

local function load(key)
  local v = redis.call('HMGET', key, 's', 'g', 'd', 'a', 'o', 'l', 'r', 'c', 'h', 'u', 'e', 'f',
    'p', 'q', 'qr')
  if not v[1] then
    return nil
  end
  local rec = {
    s = v[1], g = tonumber(v[2]), d = tonumber(v[3]), a = tonumber(v[4] or 0), o = v[5],
    l = tonumber(v[6] or 0), r = v[7], c = v[8], h = v[9], u = tonumber(v[10] or 0),
    e = tonumber(v[11] or 0), f = v[12], p = v[13], q = v[14], qr = v[15],
  }
  -- Past its expiry the record is gone, whether or not Redis evicted it yet (a fake clock runs
  -- ahead of the server's).
  if rec.e > 0 and rec.e <= NOW then
    return nil
  end
  return rec
end

-- Expiry is re-applied by every write, so no transition can leave a record without one.
local function expire(key, at)
  if FAKE then
    redis.call('PEXPIRE', key, math.max(1, at - NOW))
  else
    redis.call('PEXPIREAT', key, I(at))
  end
end

local function save(key, rec, with_payload)
  local set = {'s', rec.s, 'g', I(rec.g), 'd', I(rec.d), 'a', I(rec.a), 'u', I(rec.u),
    'e', I(rec.e)}
  local del = {}
  local function opt(name, value)
    if value and value ~= '' and value ~= 0 then
      set[#set + 1] = name
      set[#set + 1] = type(value) == 'number' and I(value) or value
    else
      del[#del + 1] = name
    end
  end
  opt('o', rec.o)
  opt('l', rec.l)
  opt('r', rec.r)
  opt('c', rec.c)
  opt('h', rec.h)
  opt('f', rec.f)
  opt('q', rec.q)
  opt('qr', rec.qr)
  if with_payload then
    set[#set + 1] = 'p'
    set[#set + 1] = rec.p
  end
  redis.call('HSET', key, unpack(set))
  if #del > 0 then
    redis.call('HDEL', key, unpack(del))
  end
  expire(key, rec.e)
end

-- The reply for one record: answer, the twelve fields of keys.RECORD_FIELDS, the payload (or ''
-- when the caller already has it) and one extra value (a superseded handle, or '').
local function reply(answer, rec, with_payload, extra)
  return {answer, rec.s, rec.g, rec.d, rec.a, rec.o or '', rec.l, rec.r or '', rec.c or '',
    rec.h or '', rec.u, rec.e, rec.f or '', (with_payload and rec.p) or '', extra or ''}
end

local function holds(rec, gen, owner)
  return rec ~= nil and rec.g == gen and rec.s == 'firing' and rec.o == owner
end
