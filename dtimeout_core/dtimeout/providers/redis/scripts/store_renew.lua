-- store_renew.lua: decide_renew (dtimeout/model.py) for each lease.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  lease ms
-- ARGV[3 + 2*(i-1) ..]  generation, owner token   of item i
-- Returns per item 1 while the caller still holds the lease, else 0.

local lease_ms = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local b = 3 + 2 * (i - 1)
  local cur = load(KEYS[i])
  if holds(cur, tonumber(ARGV[b]), ARGV[b + 1]) then
    cur.l = NOW + lease_ms
    cur.u = NOW
    save(KEYS[i], cur, false)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
