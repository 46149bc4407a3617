-- End one attempt of a delivery: done with it (SENT, or DROP: its endpoint is gone), or
-- (RETRY) its next attempt scheduled ARGV[4] ms from now, unless that falls past the retry
-- window after its first attempt: then it is given up.
-- KEYS: the owners with deliveries, when each was last served, the delivery's owner's due
--   set, the delivery's hash.
-- ARGV: the delivery's id, the lease end the attempt held, what happened (SENT, DROP, RETRY),
--   the wait before the next attempt (ms), the window (ms), the owner.
-- Returns DONE, AGAIN (scheduled), GIVEN_UP, or LOST when the attempt's lease was no longer
-- its own (another worker holds the delivery now, and settles it).
local owners, served, due, key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, outcome, owner = ARGV[1], tonumber(ARGV[3]), ARGV[6]
local result = AGAIN
if outcome ~= RETRY then
  redis.call('ZREM', due, id)
  redis.call('DEL', key)
  result = DONE
elseif tonumber(redis.call('ZSCORE', due, id)) ~= tonumber(ARGV[2]) then
  return LOST
else
  local now = now_ms()
  local first = tonumber(redis.call('HGET', key, 'first_at')) or now
  local next_at = now + tonumber(ARGV[4])
  if next_at > first + tonumber(ARGV[5]) then
    redis.call('ZREM', due, id)
    redis.call('DEL', key)
    result = GIVEN_UP
  else
    redis.call('ZADD', due, 'XX', next_at, id)
  end
end
rescore(owners, served, due, owner)
return result
