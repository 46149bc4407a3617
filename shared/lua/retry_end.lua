-- End a retry of a final batch's items in place (see retry_begin.lua), once its pages are
-- reset: the batch is running again: in_progress (queued if it never started; started_at is
-- kept), with a status event. Its final stamps go (finished_at, expires_at), and so does what
-- the end said (error: the reason it failed as a whole, or that its token budget was spent;
-- cancel_requested_at), and a completion window that has ended (deadline_ms: the retry is
-- the caller's word to run them now; one not yet ended still holds). Its own keys expire no
-- more (attempts, the runs of dead workers, start afresh; slots keep their own lapse). It is
-- active again, for the reconciler and for its owner's queued-prompt ceiling. Items a batch
-- failed as a whole never ran stay pending and run too.
-- KEYS: the batch's keys (see batch.lua), then the active batches (`keys.ACTIVE`) and the
--   owner's active batches (`keys.active_batches`).
-- ARGV: the retry's generation (as begun), the ttl ms of the owner's active batches, how many
--   items its pages reset.
-- Returns {1, chunk, ...}: the chunks that now have pending items, to queue again; {0} when
-- there was nothing to retry; {-2} when there is no such batch; {-3} when the batch is no
-- longer this retry's.
local active, owned = KEYS[#KEYS - 1], KEYS[#KEYS]
local f = redis.call('HMGET', meta, 'status', 'total', 'chunk_size', 'done', 'resetting',
  'started_at', 'created_at', 'deadline_ms', 'id')
if not f[1] then return {-2} end
if not f[5] or string.match(f[5], '^(%d+):') ~= ARGV[1] then return {-3} end
redis.call('HDEL', meta, 'resetting')
local total, size, done = tonumber(f[2]), tonumber(f[3]), tonumber(f[4]) or 0
if ARGV[3] == '0' and done >= total then return {0} end

redis.call('HDEL', meta, 'finished_at', 'expires_at', 'error', 'cancel_requested_at')
if f[8] and tonumber(f[8]) <= now_ms() then redis.call('HDEL', meta, 'deadline_ms') end
local status = f[6] and STATUS.in_progress or STATUS.queued
redis.call('HSET', meta, 'status', status)
redis.call('HINCRBY', meta, 'retries', 1)
event('k', 'status', 's', status)
for i = 1, OWN_KEYS do
  if KEYS[i] ~= attempts and KEYS[i] ~= slots then redis.call('PERSIST', KEYS[i]) end
end
redis.call('DEL', attempts)
-- Scored as at submit, by creation time in µs (created_at is in ms).
redis.call('ZADD', active, f[7] .. '000', f[9])
redis.call('SADD', owned, f[9])
redis.call('PEXPIRE', owned, ARGV[2])

local final = {}
local counted = redis.call('HGETALL', chunks)
for i = 1, #counted, 2 do final[counted[i]] = tonumber(counted[i + 1]) end
local rerun = {1}
for chunk = 0, math.ceil(total / size) - 1 do
  if (final[tostring(chunk)] or 0) < math.min(size, total - chunk * size) then
    rerun[#rerun + 1] = chunk
  end
end
return rerun
