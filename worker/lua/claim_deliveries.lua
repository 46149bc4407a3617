-- Take up to ARGV[3] of the due deliveries among the candidates given (the caller read each
-- owner's earliest just before and dealt them over the owners in turn: each is checked again
-- here), each leased to the caller for ARGV[1] ms (its score becomes the lease's end, so no
-- other worker takes it meanwhile, and it is due again if the caller dies), its attempt
-- counted and the time of its first attempt kept. One whose hash is gone (expired) leaves its
-- set. An owner has at most ARGV[4] sends at once on the caller: its other deliveries stay
-- due, for later, so that one owner's slow or dead endpoints cannot take every send slot.
-- An owner served here waits behind the owners waiting since before (`keys.WEBHOOK_SERVED`).
-- KEYS: the owners with deliveries, when each was last served, then for each candidate its
--   owner's due set and its hash.
-- ARGV: lease ms, how long a delivery's hash lives after its first attempt (ms), most to
--   take, sends per owner, how many owners follow, then owner and sends in flight for each,
--   then each candidate's id and owner (in KEYS order).
-- Returns {now, when the next delivery of an owner below its cap is due (-1: none), then one
--   {id, lease end, field, value, ...} per delivery taken}; times are epoch ms.
local owners_key, served = KEYS[1], KEYS[2]
local now = now_ms()
local most, cap, owners = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local sending = {}
for i = 6, 5 + 2 * owners, 2 do sending[ARGV[i]] = tonumber(ARGV[i + 1]) end
local first_arg = 6 + 2 * owners
local taken, touched = {}, {}
for c = 1, (#KEYS - 2) / 2 do
  if #taken >= most then break end
  local due, key = KEYS[2 * c + 1], KEYS[2 * c + 2]
  local id, owner = ARGV[first_arg + 2 * c - 2], ARGV[first_arg + 2 * c - 1]
  local score = tonumber(redis.call('ZSCORE', due, id))
  if score and score <= now and (sending[owner] or 0) < cap then
    touched[owner] = due
    if redis.call('HGET', key, 'owner') ~= owner then
      redis.call('ZREM', due, id)
    else
      sending[owner] = (sending[owner] or 0) + 1
      -- Served a millisecond on: behind an owner whose delivery fell due this same one.
      redis.call('HSET', served, owner, now + 1)
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
for owner, due in pairs(touched) do rescore(owners_key, served, due, owner) end
-- The next due among the owners this caller may still send for (those at their cap wait for
-- one of their sends to end, which wakes the caller).
local at_cap = 0
for _, n in pairs(sending) do if n >= cap then at_cap = at_cap + 1 end end
local next_due = '-1'
local first = redis.call('ZRANGE', owners_key, 0, at_cap, 'WITHSCORES')
for i = 1, #first, 2 do
  if (sending[first[i]] or 0) < cap then
    next_due = first[i + 1]
    break
  end
end
local reply = {tostring(now), next_due}
for _, fields in ipairs(taken) do reply[#reply + 1] = fields end
return reply
