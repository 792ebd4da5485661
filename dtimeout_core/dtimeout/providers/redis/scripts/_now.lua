-- _now.lua: prepended to every script (not loaded on its own).
-- ARGV[1] is the caller's "now" in epoch ms when its clock is fake (tests), else ''. With a real
-- clock the server's TIME decides, so skew between application hosts never moves fire times.
local NOW_ARG = ARGV[1]
local FAKE = NOW_ARG ~= ''
local NOW
if FAKE then
  NOW = tonumber(NOW_ARG)
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as strings without exponent notation (Lua numbers are doubles).
local function I(n)
  return string.format('%.0f', n)
end
