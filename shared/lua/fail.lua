-- Fail a batch as a whole unless it is already final.
-- KEYS: the batch's keys (see batch.lua). ARGV: the error JSON, ttl ms of a final batch.
-- Returns 1 if this call failed it, else 0.
local status = redis.call('HGET', meta, 'status')
if not status or FINAL[status] then return 0 end
redis.call('HSET', meta, 'error', ARGV[1])
finish(STATUS.failed, ARGV[2])
return 1
