-- store_abandon.lua: decide_abandon (dtimeout/model.py): PENDING of a generation -> CANCELLED
-- (send_failed) or DEAD (undeliverable); anything else is left alone.
-- KEYS[1]  the record
-- ARGV[1]  now ms, or '' to use the server's TIME
-- ARGV[2..5]  generation, target state ('cancelled'|'dead'), reason, operation id
-- Returns 'abandoned' or 'lost'.

local key = KEYS[1]
local gen, state, reason, op = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local cur = load(key)
if cur and cur.q == op then
  return cur.qr
end
if not cur or cur.g ~= gen or cur.s ~= 'pending' then
  return 'lost'
end
cur.s = state
cur.r = reason
cur.u = NOW
cur.q = op
cur.qr = 'abandoned'
save(key, cur, false)
return 'abandoned'
