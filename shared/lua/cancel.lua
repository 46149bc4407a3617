-- Ask a batch to stop: queued or in_progress -> cancelling.
-- KEYS: the batch's keys (see batch.lua). ARGV: none, or why it stops (an error JSON, kept as
--   the batch's error: a worker halting a batch the provider refused).
-- Returns 1 if this call asked, 0 if it was already cancelling, -1 if it is final, -2 if there
-- is no such batch.
local status = redis.call('HGET', meta, 'status')
if not status then return -2 end
if status == STATUS.cancelling then return 0 end
if status ~= STATUS.queued and status ~= STATUS.in_progress then return -1 end
redis.call('HSET', meta, 'status', STATUS.cancelling, 'cancel_requested_at', now_ms())
if ARGV[1] then redis.call('HSET', meta, 'error', ARGV[1]) end
event('k', 'status', 's', STATUS.cancelling)
return 1
