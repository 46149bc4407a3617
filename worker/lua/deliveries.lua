-- What the webhook delivery scripts share: Redis's clock, and a delivery's hash by its id
-- (`keys.webhook_delivery`).
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local function delivery(id)
  return DELIVERY_BEFORE .. id .. DELIVERY_AFTER
end
