-- Admit a submission of an owner: within the rate per minute, and within the ceiling on
-- prompts not yet final (the owner's active batches, less their final counts, plus room
-- reserved by submissions being stored now). Checks and reserves at once.
-- KEYS: the owner's submissions, active batches, reservations, then the hash of each batch
--   the caller found in the active set just before.
-- ARGV: rate per minute, prompt ceiling (0 = off), prompts, token, window ms, reservation
--   ttl ms, then the ids of those batches (in KEYS order).
-- Returns {0, 0} admitted (room reserved, submission counted), {1, ms until a submission
-- leaves the window}, {2, prompts already queued}, or {3, 0} when the active set holds a batch
-- the caller did not name (read it again).
local rate, ceiling, prompts = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local token, window, hold = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if rate > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= rate then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, tonumber(oldest[2]) + window - now}
  end
end
if ceiling > 0 then
  local named = {}
  for n = 4, #KEYS do named[ARGV[n + 3]] = KEYS[n] end
  local queued = 0
  local members = redis.call('SMEMBERS', KEYS[2])
  for _, id in ipairs(members) do
    if not named[id] then return {3, 0} end
  end
  for _, id in ipairs(members) do
    -- A batch hash counts its items by final status, one field each.
    local f = redis.call('HMGET', named[id], 'status', 'total', unpack(ITEM_FINAL))
    if not f[1] or FINAL[f[1]] then
      redis.call('SREM', KEYS[2], id)
    else
      queued = queued + tonumber(f[2])
      for n = 3, #f do queued = queued - (tonumber(f[n]) or 0) end
    end
  end
  local held = redis.call('HGETALL', KEYS[3])
  for i = 1, #held, 2 do
    local n, expiry = string.match(held[i + 1], '^(%d+):(%d+)$')
    if not n or tonumber(expiry) <= now then
      redis.call('HDEL', KEYS[3], held[i])
    else
      queued = queued + tonumber(n)
    end
  end
  if queued + prompts > ceiling then return {2, queued} end
  redis.call('HSET', KEYS[3], token, prompts .. ':' .. (now + hold))
  redis.call('PEXPIRE', KEYS[3], hold)
end
if rate > 0 then
  redis.call('ZADD', KEYS[1], now, token)
  redis.call('PEXPIRE', KEYS[1], window)
end
return {0, 0}
