-- store_attach.lua: decide_attach_handle (dtimeout/model.py) for each item.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2 + 2*(i-1) ..]  generation, native handle   of item i
-- Returns per item 1 when the record was updated, else 0.

local out = {}
for i = 1, #KEYS do
  local b = 2 + 2 * (i - 1)
  local cur = load(KEYS[i])
  if cur and cur.g == tonumber(ARGV[b]) then
    cur.h = ARGV[b + 1]
    save(KEYS[i], cur, false)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
