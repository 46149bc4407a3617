-- What the webhook delivery scripts share: Redis's clock. A delivery's hash
-- (`keys.webhook_delivery`) is always one of the script's KEYS, named by the caller.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
