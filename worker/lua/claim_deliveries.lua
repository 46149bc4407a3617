-- Take up to ARGV[3] of the deliveries that are due among the candidates given (the caller
-- read the earliest of the due set just before: each is checked again here), each leased to
-- the caller for ARGV[1] ms (its score becomes the lease's end, so no other worker takes it
-- meanwhile, and it is due again if the caller dies), its attempt counted and the time of its
-- first attempt kept. One whose hash is gone (expired) leaves the set. An owner has at most
-- ARGV[4] sends at once on the caller: one of an owner at that many stays due, for later,
-- so that one owner's slow or dead endpoints cannot take every send slot.
-- KEYS: the due deliveries, then each candidate's hash.
-- ARGV: lease ms, how long a delivery's hash lives after its first attempt (ms), most to
--   take, sends per owner, how many owners follow, then owner and sends in flight for each,
--   then each candidate's id (in KEYS order).
-- Returns {now, when the next delivery is due (-1: none), how many due ones were left for
--   their owner's cap, then one {id, lease end, field, value, ...} per delivery taken}; times
--   are epoch ms.
local due = KEYS[1]
local now = now_ms()
local most, cap, owners = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local sending = {}
for i = 6, 5 + 2 * owners, 2 do sending[ARGV[i]] = tonumber(ARGV[i + 1]) end
local first_id = 6 + 2 * owners
local taken, capped = {}, 0
for n = 2, #KEYS do
  if #taken >= most then break end
  local id, key = ARGV[first_id + n - 2], KEYS[n]
  local score = tonumber(redis.call('ZSCORE', due, id))
  if score and score <= now then
    local owner = redis.call('HGET', key, 'owner')
    if not owner then
      redis.call('ZREM', due, id)
    elseif (sending[owner] or 0) >= cap then
      capped = capped + 1
    else
      sending[owner] = (sending[owner] or 0) + 1
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
local reply = {tostring(now), first[2] or '-1', capped}
for _, fields in ipairs(taken) do reply[#reply + 1] = fields end
return reply
