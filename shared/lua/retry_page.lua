-- Reset one page of a retry (see retry_begin.lua): each item given whose stored result still
-- has one of the given statuses loses that result and is pending again, its counts taken back
-- from the batch (the count of its status, `done`) and from its chunk. Usage, pacing and the
-- service-wide counters keep what the first run spent: they only ever add up.
-- KEYS: the batch's keys (see batch.lua).
-- ARGV: the retry's generation (as begun), how many statuses follow, the statuses, then the
--   item indices (one page).
-- Returns how many items it reset, or -3 when the batch is no longer this retry's.
local resetting = redis.call('HGET', meta, 'resetting')
if not resetting or string.match(resetting, '^(%d+):') ~= ARGV[1] then return -3 end
local size = tonumber(redis.call('HGET', meta, 'chunk_size'))
local wanted, statuses = {}, tonumber(ARGV[2])
for i = 3, 2 + statuses do wanted[ARGV[i]] = true end
local page = {unpack(ARGV, 3 + statuses, #ARGV)}
if #page == 0 then return 0 end
-- A stored result is JSON with its status first (`shared/results.py`); read it as JSON when
-- it is not.
local function status_of(raw)
  return string.match(raw, '^{"status":"([%w_]+)"') or cjson.decode(raw)['status']
end
local chosen, per_status, per_chunk = {}, {}, {}
for n, raw in ipairs(redis.call('HMGET', results, unpack(page))) do
  local status = raw and status_of(raw)
  if status and wanted[status] then
    chosen[#chosen + 1] = page[n]
    per_status[status] = (per_status[status] or 0) + 1
    local chunk = tostring(math.floor(tonumber(page[n]) / size))
    per_chunk[chunk] = (per_chunk[chunk] or 0) + 1
  end
end
if #chosen == 0 then return 0 end
redis.call('HDEL', results, unpack(chosen))
for status, n in pairs(per_status) do redis.call('HINCRBY', meta, status, -n) end
for chunk, n in pairs(per_chunk) do redis.call('HINCRBY', chunks, chunk, -n) end
redis.call('HINCRBY', meta, 'done', -#chosen)
return #chosen
