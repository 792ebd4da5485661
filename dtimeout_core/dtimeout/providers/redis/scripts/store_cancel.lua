-- store_cancel.lua: decide_cancel (dtimeout/model.py) for each item.
-- KEYS[i]    the record of item i
-- ARGV[1]    now ms, or '' to use the server's TIME
-- ARGV[2]    JSON array of the cancel request ids (the same id re-sent answers 'cancelled')
-- Returns one JSON array (a single bulk reply parses far faster than nested ones):
-- per item {answer, generation or '', handle or ''}; answers cancelled|too_late|
-- not_found|already_cancelled. not_found writes nothing: no marker blocks a later schedule.

local ids = cjson.decode(ARGV[2])
local out = {}
for i = 1, #KEYS do
  local key, rid = KEYS[i], ids[i]
  local cur = load(key)
  if not cur then
    out[i] = {'not_found', '', ''}
  elseif cur.s == 'pending' then
    cur.s = 'cancelled'
    cur.r = 'cancelled'
    cur.c = rid
    cur.u = NOW
    save(key, cur, false)
    out[i] = {'cancelled', I(cur.g), cur.h or ''}
  elseif cur.s == 'cancelled' then
    out[i] = {cur.c == rid and 'cancelled' or 'already_cancelled', I(cur.g), cur.h or ''}
  else
    -- FIRING, FIRED, and DEAD (the handler ran and failed for good)
    out[i] = {'too_late', I(cur.g), cur.h or ''}
  end
end
return cjson.encode(out)
