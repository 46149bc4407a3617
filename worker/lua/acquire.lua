-- Reserve a call's place: one request and ARGV[3] tokens.
-- KEYS: the model's pacing hash. ARGV: as every pacing script's (pacing.lua); its own are
--   tokens, burst ms, ttl ms.
-- Returns the ms to wait before the call.
local burst = tonumber(ARGV[4])
local start = math.max(now, tonumber(h[5]) or 0)
local function take(tat, inc)
  tat = math.max(tonumber(tat) or 0, now)
  start = math.max(start, tat + inc - math.max(burst, inc))
  return tat
end
local rt, tt, ri, ti
if rpm > 0 then ri = 60000 / rpm; rt = take(h[1], ri) end
if tpm > 0 then ti = tonumber(ARGV[3]) * 60000 / tpm; tt = take(h[2], ti) end
if rt then redis.call('HSET', key, 'rt', math.max(rt, start) + ri) end
if tt then redis.call('HSET', key, 'tt', math.max(tt, start) + ti) end
redis.call('PEXPIRE', key, ARGV[5])
return math.floor(start - now)
