-- End one attempt of a delivery: done with it (SENT, or DROP: its endpoint is gone), or
-- (RETRY) its next attempt scheduled ARGV[4] ms from now, unless that falls past the retry
-- window after its first attempt: then it is given up.
-- KEYS: the due deliveries, the delivery's hash. ARGV: the delivery's id, the lease end the attempt held, what
--   happened (SENT, DROP, RETRY), the wait before the next attempt (ms), the window (ms).
-- Returns DONE, AGAIN (scheduled), GIVEN_UP, or LOST when the attempt's lease was no longer
-- its own (another worker holds the delivery now, and settles it).
local due, key = KEYS[1], KEYS[2]
local id, outcome = ARGV[1], tonumber(ARGV[3])
if outcome ~= RETRY then
  redis.call('ZREM', due, id)
  redis.call('DEL', key)
  return DONE
end
if tonumber(redis.call('ZSCORE', due, id)) ~= tonumber(ARGV[2]) then return LOST end
local now = now_ms()
local first = tonumber(redis.call('HGET', key, 'first_at')) or now
local next_at = now + tonumber(ARGV[4])
if next_at > first + tonumber(ARGV[5]) then
  redis.call('ZREM', due, id)
  redis.call('DEL', key)
  return GIVEN_UP
end
redis.call('ZADD', due, 'XX', next_at, id)
return AGAIN
