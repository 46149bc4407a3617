-- Take the deliveries that are due: at most ARGV[1], each leased to the caller for ARGV[2] ms
-- (its score becomes the lease's end, so no other worker takes it meanwhile, and it is due
-- again if the caller dies), its attempt counted and the time of its first attempt kept.
-- One whose hash is gone (expired) leaves the set.
-- KEYS: the due deliveries. ARGV: most to take, lease ms, how long a delivery's hash lives
--   after its first attempt (ms).
-- Returns {now, when the next delivery is due (-1: none), then one {id, lease end, field,
--   value, ...} per delivery taken}; times are epoch ms.
local due = KEYS[1]
local now = now_ms()
local taken = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, ARGV[1])) do
  local key = delivery(id)
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', due, id)
  else
    local lease = now + tonumber(ARGV[2])
    redis.call('ZADD', due, 'XX', lease, id)
    redis.call('HINCRBY', key, 'attempts', 1)
    if redis.call('HSETNX', key, 'first_at', now) == 1 then
      redis.call('PEXPIRE', key, ARGV[3])
    end
    local fields = redis.call('HGETALL', key)
    table.insert(fields, 1, id)
    table.insert(fields, 2, tostring(lease))
    taken[#taken + 1] = fields
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local reply = {tostring(now), first[2] or '-1'}
for _, fields in ipairs(taken) do reply[#reply + 1] = fields end
return reply
