-- A call used ARGV[3] tokens more (or fewer, negative) than it reserved: move the token bucket.
-- KEYS: the model's pacing hash. ARGV: as acquire.lua's. Returns 0.
if tpm > 0 and h[2] then
  redis.call('HSET', key, 'tt', tonumber(h[2]) + tonumber(ARGV[3]) * 60000 / tpm)
end
return 0
