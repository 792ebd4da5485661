-- store_claim.lua: decide_claim (dtimeout/model.py, _claim.lua) for each delivered message.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [generation, due ms, payload JSON text (for an orphan) or '',
--          owner token, lease ms, max attempts, orphan policy ('fire'|'drop'), retention ms]
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- one reply per item (see _record.lua), with the payload; answers claimed|not_due|busy|
-- stale|cancelled|fired|dead, or {'missing'} when there is no record and orphans are dropped,
-- or {'orphan'} when there is none, orphans fire and the payload was not sent: nothing was
-- written and the caller claims that item again with its payload. (The payload matters only
-- for an orphan, which is rare: not sending it saves encoding and bytes on every claim.)

local function claim(key, gen, due, payload, owner, lease_ms, max_attempts, policy, retention)
  local cur = load(key, true)
  if not cur then
    if policy == 'drop' then
      return {'missing'}
    end
    if payload == '' then
      return {'orphan'}
    end
    -- an orphan: the record expired or was wiped; never lose a timeout
    local rec = {s = 'firing', g = gen, d = due, p = payload, a = 1, o = owner,
      l = NOW + lease_ms, u = NOW, e = math.max(due, NOW) + retention, f = '1'}
    save(key, rec, true)
    return reply('claimed', rec, true)
  end
  return reply(claim_record(key, cur, gen, owner, lease_ms, max_attempts, retention), cur, true)
end

local items = cjson.decode(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local it = items[i]
  out[i] = claim(KEYS[i], it[1], it[2], it[3], it[4], it[5], it[6], it[7], it[8])
end
return cjson.encode(out)
