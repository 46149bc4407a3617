-- What the provider said: its limits, and perhaps a 429's wait. With a wait, nobody starts
-- before it ends, and, if the call had been paced (the limits were wrong, not yet known), the
-- rate halves, once per wait.
-- KEYS: the model's pacing hash. ARGV: as every pacing script's (pacing.lua); its own are the
--   rpm and tpm said (ARGV[3], ARGV[4]; 0: not said), the 429's wait ms (ARGV[5]; 0: none),
--   the lowest rate factor, ttl ms, and 1 if the call had been paced (ARGV[8]).
-- Returns 0.
if tonumber(ARGV[3]) > 0 then redis.call('HSET', key, 'rl', ARGV[3], 'ls', now) end
if tonumber(ARGV[4]) > 0 then redis.call('HSET', key, 'tl', ARGV[4], 'ls', now) end
local wait = tonumber(ARGV[5])
if wait > 0 then
  local nb = tonumber(h[5]) or 0
  if now >= nb and ARGV[8] == '1' then
    redis.call('HSET', key, 'f', math.max(tonumber(ARGV[6]), f / 2), 'fs', now)
  end
  redis.call('HSET', key, 'nb', math.max(nb, now + wait))
end
redis.call('PEXPIRE', key, ARGV[7])
return 0
