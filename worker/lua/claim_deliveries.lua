-- Take the deliveries that are due among the candidates given (the caller read the earliest
-- of the due set just before: each is checked again here), each leased to the caller for
-- ARGV[1] ms (its score becomes the lease's end, so no other worker takes it meanwhile, and it
-- is due again if the caller dies), its attempt counted and the time of its first attempt
-- kept. One whose hash is gone (expired) leaves the set.
-- KEYS: the due deliveries, then each candidate's hash. ARGV: lease ms, how long a delivery's
--   hash lives after its first attempt (ms), then each candidate's id (in KEYS order).
-- Returns {now, when the next delivery is due (-1: none), then one {id, lease end, field,
--   value, ...} per delivery taken}; times are epoch ms.
local due = KEYS[1]
local now = now_ms()
local taken = {}
for n = 2, #KEYS do
  local id, key = ARGV[n + 1], KEYS[n]
  local score = tonumber(redis.call('ZSCORE', due, id))
  if score and score <= now then
    if redis.call('EXISTS', key) == 0 then
      redis.call('ZREM', due, id)
    else
      local lease = now + tonumber(ARGV[1])
      redis.call('ZADD', due, 'XX', lease, id)
      redis.call('HINCRBY', key, 'attempts', 1)
      if redis.call('HSETNX', key, 'first_at', now) == 1 then
        redis.call('PEXPIRE', key, ARGV[2])
      end
      local fields = redis.call('HGETALL', key)
      table.insert(fields, 1, id)
      table.insert(fields, 2, tostring(lease))
      taken[#taken + 1] = fields
    end
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local reply = {tostring(now), first[2] or '-1'}
for _, fields in ipairs(taken) do reply[#reply + 1] = fields end
return reply
