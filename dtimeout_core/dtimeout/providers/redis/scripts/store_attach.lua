-- store_attach.lua: decide_attach_handle (dtimeout/model.py) for each item.
-- KEYS[i]  the record of item i
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2]  JSON array, item i = [generation, native handle]
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- per item 1 when the record was updated, else 0.

local items = cjson.decode(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local cur = load(KEYS[i])
  if cur and cur.g == items[i][1] then
    cur.h = items[i][2]
    save(KEYS[i], cur, false)
    out[i] = 1
  else
    out[i] = 0
  end
end
return cjson.encode(out)
