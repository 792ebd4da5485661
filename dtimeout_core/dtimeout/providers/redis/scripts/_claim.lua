-- _claim.lua: decide_claim (dtimeout/model.py) for a record that exists. Prepended to
-- store_claim.lua and store_receive.lua after _record.lua (not loaded on its own), so the rule
-- is written once; each script decides itself what a missing record (an orphan) means.

-- Lease ``cur`` to ``owner``: FIRING, one more attempt, lease and expiry moved; saved.
local function lease_record(key, cur, owner, lease_ms, retention)
  cur.s = 'firing'
  cur.a = cur.a + 1
  cur.o = owner
  cur.l = NOW + lease_ms
  cur.u = NOW
  cur.e = math.max(cur.e, math.max(cur.d, NOW) + retention)
  save(key, cur, false)
  return 'claimed'
end

-- The answer to claiming generation ``gen`` of the record ``cur`` for ``owner``:
-- claimed|not_due|busy|stale|cancelled|fired|dead; ``cur`` is saved when it changes.
local function claim_record(key, cur, gen, owner, lease_ms, max_attempts, retention)
  if cur.g ~= gen then
    return 'stale'
  end
  if cur.s == 'cancelled' or cur.s == 'fired' or cur.s == 'dead' then
    return cur.s
  end
  if cur.s == 'pending' then
    if cur.d > NOW then
      return 'not_due'
    end
    return lease_record(key, cur, owner, lease_ms, retention)
  end
  -- FIRING
  if cur.o == owner then
    return 'claimed' -- a re-sent claim: same answer, same attempt
  end
  if cur.l > NOW then
    return 'busy'
  end
  if cur.a >= max_attempts then
    cur.s = 'dead'
    cur.r = cur.r or 'lease expired after the last attempt'
    cur.o = false
    cur.l = 0
    cur.u = NOW
    save(key, cur, false)
    return 'dead'
  end
  return lease_record(key, cur, owner, lease_ms, retention)
end
