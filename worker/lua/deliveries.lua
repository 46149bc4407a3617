-- What the webhook delivery scripts share: Redis's clock, and an owner's place among the
-- owners with deliveries. A delivery's hash (`keys.webhook_delivery`), its owner's due set
-- (`keys.webhook_due`), the owners' set (`keys.WEBHOOK_OWNERS`) and when each was last served
-- (`keys.WEBHOOK_SERVED`) are always among the script's KEYS, named by the caller.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- After an owner's due set changed: the owner scores its earliest delivery among the owners,
-- or the time it was last served when that is later (it waits behind the owners waiting since
-- before), or leaves them when it has none left.
local function rescore(owners, served, due, owner)
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[2] then
    local last = tonumber(redis.call('HGET', served, owner)) or 0
    redis.call('ZADD', owners, string.format('%d', math.max(tonumber(first[2]), last)), owner)
  else
    redis.call('ZREM', owners, owner)
    redis.call('HDEL', served, owner)
  end
end
