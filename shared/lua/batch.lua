-- What every batch script shares. The header above names its KEYS (`keys.BATCH_SCRIPT_KEYS`):
-- the batch's own OWN_KEYS keys (meta, inputs, results, chunks, attempts, slots, events, feeding,
-- redo), then stats, the service-wide counters, and outbox, the webhook events to deliver.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local function event(...)
  redis.call('XADD', events, 'MAXLEN', '~', EVENTS_MAXLEN, '*', ...)
end
-- The batch is final: stamp it, count it, and let every one of its own keys expire after ttl ms.
local function finish(status, ttl)
  local now = now_ms()
  redis.call('HSET', meta, 'status', status, 'finished_at', now, 'expires_at', now + ttl)
  redis.call('HINCRBY', stats, 'batches:' .. status, 1)
  event('k', 'status', 's', status)
  for i = 1, OWN_KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
  -- The owner's webhooks hear of it through the outbox, written here with the status itself
  -- (workers skip the events of owners without endpoints).
  local f = redis.call('HMGET', meta, 'id', 'owner')
  redis.call('XADD', outbox, '*', 'batch', f[1], 'owner', f[2] or '', 'status', status, 'at', now)
end
-- A key written once the batch has its expiry (it is final) expires with it, not never.
local function expire_with_batch(key)
  local ttl = redis.call('PTTL', meta)
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end
-- What an item ends as, by name (each is also the batch hash's field counting those items).
local ITEM = {}
for _, name in ipairs(ITEM_FINAL) do ITEM[name] = name end
ITEM = strict(ITEM)
