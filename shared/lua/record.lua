-- Write results once each, with their counts and usage; one call takes many results (the
-- worker groups those that finish while a write is on its way). A queued batch that gets a
-- result is in_progress from then on; a cancelling one ends cancelled only if it cancelled
-- an item.
-- KEYS: the batch's keys (see batch.lua).
-- ARGV: ttl ms of a final batch, then STRIDE values per result: index, result JSON, item
--   status, chunk, custom_id, then one number per SUM_FIELDS entry, added to that field of the
--   batch and to the matching SUM_STATS counter.
-- Returns one code per result: -1 when the batch is gone or final (failed as a whole, or every
-- item has its result: a write then can only be a late one of an earlier run, landing on an
-- item that a retry is resetting, which would make the batch final twice), 0 when the item
-- already had a result (a repeated write changes nothing), 1 when written, 2 when written and
-- it was the batch's last item (the batch is then final, exactly once).
local codes = {}
local status = redis.call('HGET', meta, 'status')
if not status or FINAL[status] then
  for i = 2, #ARGV, STRIDE do codes[#codes + 1] = -1 end
  return codes
end
local total = tonumber(redis.call('HGET', meta, 'total'))
local budget = tonumber(redis.call('HGET', meta, 'max_total_tokens'))
for i = 2, #ARGV, STRIDE do
  local index, item_status = ARGV[i], ARGV[i + 2]
  if redis.call('HSETNX', results, index, ARGV[i + 1]) == 0 then
    codes[#codes + 1] = 0
  else
    if status == STATUS.queued and item_status ~= ITEM.cancelled
        and item_status ~= ITEM.expired then
      -- A result before any run marked the batch started (a run's failures written first, or
      -- a write racing start.lua): it has started now, as start.lua would have said. Items
      -- cancelled or expired before any run started nothing.
      status = STATUS.in_progress
      redis.call('HSET', meta, 'status', status, 'started_at', now_ms())
      event('k', 'status', 's', status)
    end
    redis.call('HINCRBY', meta, item_status, 1)
    for t, field in ipairs(SUM_FIELDS) do
      local n = ARGV[i + 4 + t]
      if n ~= '0' then
        redis.call('HINCRBY', meta, field, n)
        redis.call('HINCRBY', stats, SUM_STATS[t], n)
      end
    end
    redis.call('HINCRBY', chunks, ARGV[i + 3], 1)
    redis.call('HINCRBY', stats, 'items:' .. item_status, 1)
    event('k', 'item', 'i', index, 's', item_status, 'c', ARGV[i + 4])
    if redis.call('HINCRBY', meta, 'done', 1) < total then
      codes[#codes + 1] = 1
      if budget and status == STATUS.in_progress then
        local used = redis.call('HMGET', meta, 'input_tokens', 'output_tokens')
        if (tonumber(used[1]) or 0) + (tonumber(used[2]) or 0) >= budget then
          -- The token budget is spent: no new call starts; the rest end cancelled.
          status = STATUS.cancelling
          redis.call('HSET', meta, 'status', status, 'cancel_requested_at', now_ms(),
            'error', cjson.encode({type = BUDGET_EXCEEDED, message = 'The batch used its ' ..
            'token budget of ' .. budget .. ' tokens (max_total_tokens), so no more items ' ..
            'started.'}))
          event('k', 'status', 's', status)
        end
      end
    else
      -- A batch ends as its items did. Any cancelled (now, or earlier and not retried) make
      -- it cancelled, unless a completion window ended while it was not cancelling: then
      -- expired. Asked to cancel (or its budget spent), a batch whose calls in flight were
      -- all that was left cancelled nothing: every item ran, so it completed, and what the
      -- cancel said (a spent budget's error) no longer holds.
      local cancelled = tonumber(redis.call('HGET', meta, ITEM.cancelled)) or 0
      local expired = tonumber(redis.call('HGET', meta, ITEM.expired)) or 0
      local ending = STATUS.completed
      local said = status == STATUS.cancelling and redis.call('HGET', meta, 'error')
      if said and cjson.decode(said).type == PROVIDER_AUTH then
        ending = STATUS.failed  -- halted: the provider refused the batch's key
      elseif cancelled > 0 and (status == STATUS.cancelling or expired == 0) then
        ending = STATUS.cancelled
      elseif expired > 0 then
        ending = STATUS.expired
      end
      if ending == STATUS.completed or ending == STATUS.expired then
        redis.call('HDEL', meta, 'error')
      end
      finish(ending, ARGV[1])
      codes[#codes + 1] = 2
    end
  end
end
return codes
