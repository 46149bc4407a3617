-- queued -> in_progress, once, stamping started_at.
-- KEYS: the batch's keys (see batch.lua). ARGV: none.
-- Returns 1 if this call started the batch, else 0.
if redis.call('HGET', meta, 'status') ~= STATUS.queued then return 0 end
redis.call('HSET', meta, 'status', STATUS.in_progress, 'started_at', now_ms())
event('k', 'status', 's', STATUS.in_progress)
return 1
