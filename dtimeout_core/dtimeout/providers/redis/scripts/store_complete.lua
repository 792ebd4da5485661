-- store_complete.lua: decide_complete (dtimeout/model.py) for each lease.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [generation, owner token]
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- per item 'completed' or 'lost'. The owner stays on FIRED so a re-sent complete is
-- recognised and answered 'completed' again.

local items = cjson.decode(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local gen, owner = items[i][1], items[i][2]
  local cur = load(KEYS[i])
  if cur and cur.g == gen and cur.s == 'fired' and cur.o == owner then
    out[i] = 'completed'
  elseif holds(cur, gen, owner) then
    cur.s = 'fired'
    cur.l = 0
    cur.u = NOW
    save(KEYS[i], cur, false)
    out[i] = 'completed'
  else
    out[i] = 'lost'
  end
end
return cjson.encode(out)
