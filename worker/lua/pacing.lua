-- What every pacing script shares: one model's state (KEYS[1]: rt/tt the request and token
-- buckets' theoretical arrival times, rl/tl the limits learned and ls when last stated, nb no
-- call before, f/fs the rate factor after 429s and when it was set), and its limits now.
-- ARGV of every pacing script: configured rpm, configured tpm, its own, then the rpm and tpm
-- this worker last heard from the provider (should the key have been lost).
local key = KEYS[1]
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local h = redis.call('HMGET', key, 'rt', 'tt', 'rl', 'tl', 'nb', 'f', 'fs', 'ls')
if now - (tonumber(h[8]) or 0) > LEARNED_MS then  -- learned limits lapse unless confirmed
  h[3], h[4] = nil, nil
end
local f = tonumber(h[6]) or 1
if f < 1 then  -- additive increase: half the limit back per minute without a 429
  f = math.min(1, f + (now - (tonumber(h[7]) or now)) / 120000)
end
-- A configured limit, else the one learned (kept here, or as this worker last heard it).
local function limit(configured, learned, heard)
  local l = tonumber(configured)
  if l == 0 then l = tonumber(learned) or tonumber(heard) or 0 end
  return l * f * HEADROOM
end
local rpm, tpm = limit(ARGV[1], h[3], ARGV[#ARGV - 1]), limit(ARGV[2], h[4], ARGV[#ARGV])

