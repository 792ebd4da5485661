-- store_renew.lua: decide_renew (dtimeout/model.py) for each lease.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [generation, owner token]
-- ARGV[3]  lease ms
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- per item 1 while the caller still holds the lease, else 0.

local items = cjson.decode(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  local cur = load(KEYS[i])
  if holds(cur, items[i][1], items[i][2]) then
    cur.l = NOW + lease_ms
    cur.u = NOW
    save(KEYS[i], cur, false)
    out[i] = 1
  else
    out[i] = 0
  end
end
return cjson.encode(out)
