-- Retry a final batch's items in place. Each item given (found by retry_scan.lua) whose stored
-- result still has one of the given statuses loses that result and is pending again, its
-- counts taken back from the batch (the count of its status, `done`) and from its chunk;
-- items a batch failed as a whole never ran stay pending and run too. Usage, pacing and the
-- service-wide counters keep what the first run spent: they only ever add up.
-- The batch is running again: in_progress (queued if it never started; started_at is kept),
-- with a status event. Its final stamps go (finished_at, expires_at), and so does what the
-- end said (error: the reason it failed as a whole, or that its token budget was spent;
-- cancel_requested_at), and a completion window that has ended (deadline_ms: the retry is
-- the caller's word to run them now; one not yet ended still holds). Its own keys expire no
-- more (attempts, the runs of dead workers, start afresh; slots keep their own lapse). It is
-- active again, for the reconciler and for its owner's queued-prompt ceiling.
-- KEYS: the batch's keys (see batch.lua), then the active batches (`keys.ACTIVE`) and the
--   owner's active batches (`keys.active_batches`).
-- ARGV: the batch's `retries` count when its items were scanned ('0' for none), the ttl ms of
--   the owner's active batches, how many statuses follow, the statuses, then the item indices.
-- Returns {1, chunk, ...}: the chunks that now have pending items, to queue again; {0} when
-- there is nothing to retry; {-1} when the batch is not final; {-2} when there is no such
-- batch; {-3} when it was retried since its items were scanned (scan again); {-4} when its
-- token budget (max_total_tokens) is spent: every retried item would be cancelled again.
local active, owned = KEYS[#KEYS - 1], KEYS[#KEYS]
local f = redis.call('HMGET', meta, 'status', 'total', 'chunk_size', 'done', 'retries',
  'started_at', 'created_at', 'deadline_ms', 'id')
if not f[1] then return {-2} end
if not FINAL[f[1]] then return {-1} end
if (f[5] or '0') ~= ARGV[1] then return {-3} end
local budget = tonumber(redis.call('HGET', meta, 'max_total_tokens'))
if budget then
  local used = redis.call('HMGET', meta, 'input_tokens', 'output_tokens')
  if (tonumber(used[1]) or 0) + (tonumber(used[2]) or 0) >= budget then return {-4} end
end
local total, size, done = tonumber(f[2]), tonumber(f[3]), tonumber(f[4]) or 0
local wanted, statuses = {}, tonumber(ARGV[3])
for i = 4, 3 + statuses do wanted[ARGV[i]] = true end

-- Fields per HMGET and HDEL: far below the most values Lua's unpack takes.
local STEP = 1000
local function status_of(raw)
  return string.match(raw, '^{"status":"([%w_]+)"') or cjson.decode(raw)['status']
end
local chosen, per_status, per_chunk = {}, {}, {}
for start = 4 + statuses, #ARGV, STEP do
  local page = {unpack(ARGV, start, math.min(start + STEP - 1, #ARGV))}
  for n, raw in ipairs(redis.call('HMGET', results, unpack(page))) do
    local status = raw and status_of(raw)
    if status and wanted[status] then
      chosen[#chosen + 1] = page[n]
      per_status[status] = (per_status[status] or 0) + 1
      local chunk = tostring(math.floor(tonumber(page[n]) / size))
      per_chunk[chunk] = (per_chunk[chunk] or 0) + 1
    end
  end
end
if #chosen == 0 and done >= total then return {0} end

for start = 1, #chosen, STEP do
  redis.call('HDEL', results, unpack(chosen, start, math.min(start + STEP - 1, #chosen)))
end
for status, n in pairs(per_status) do redis.call('HINCRBY', meta, status, -n) end
for chunk, n in pairs(per_chunk) do redis.call('HINCRBY', chunks, chunk, -n) end
if #chosen > 0 then redis.call('HINCRBY', meta, 'done', -#chosen) end

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
