-- What the webhook delivery scripts share: Redis's clock, and an owner's place among the
-- owners with deliveries. A delivery's hash (`keys.webhook_delivery`), its owner's due set
-- (`keys.webhook_due`) and the owners' set (`keys.WEBHOOK_OWNERS`) are always among the
-- script's KEYS, named by the caller.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- After an owner's due set changed: the owner scores its earliest delivery among the owners,
-- or leaves them when it has none left.
local function rescore(owners, due, owner)
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', owners, first[2], owner)
  else
    redis.call('ZREM', owners, owner)
  end
end
