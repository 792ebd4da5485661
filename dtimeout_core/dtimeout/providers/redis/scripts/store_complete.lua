-- store_complete.lua: decide_complete (dtimeout/model.py) for each lease.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2 + 2*(i-1) ..]  generation, owner token   of item i
-- Returns per item 'completed' or 'lost'. The owner stays on FIRED so a re-sent complete is
-- recognised and answered 'completed' again.

local out = {}
for i = 1, #KEYS do
  local b = 2 + 2 * (i - 1)
  local gen, owner = tonumber(ARGV[b]), ARGV[b + 1]
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
return out
