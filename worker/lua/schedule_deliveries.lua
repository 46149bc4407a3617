-- Turn one outbox entry into its deliveries and take it off the outbox, in one step: an entry
-- is fanned out once, even when two workers hold it (one took it over from the other, which
-- it thought dead): the second finds it acknowledged already.
-- KEYS: the outbox, the owners with deliveries, when each was last served, the entry's
--   owner's due set, then each delivery's hash.
-- ARGV: the consumer group, the entry's id, how long a delivery's hash lives (ms), the owner,
--   then 1 + #DELIVERY_FIELDS values per delivery (in KEYS order): its id, then its fields in
--   DELIVERY_FIELDS order.
-- Returns how many deliveries were scheduled, or -1 when the entry was handled already.
local outbox, owners, served, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('XACK', outbox, ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('XDEL', outbox, ARGV[2])
local now = now_ms()
local stride = 1 + #DELIVERY_FIELDS
local scheduled = 0
for i = 5, #ARGV, stride do
  local id = ARGV[i]
  local key = KEYS[5 + (i - 5) / stride]
  if redis.call('EXISTS', key) == 0 then
    for f, name in ipairs(DELIVERY_FIELDS) do redis.call('HSET', key, name, ARGV[i + f]) end
    redis.call('HSET', key, 'attempts', 0)
    redis.call('PEXPIRE', key, ARGV[3])
    redis.call('ZADD', due, 'NX', now, id)
    scheduled = scheduled + 1
  end
end
if scheduled > 0 then rescore(owners, served, due, ARGV[4]) end
return scheduled
