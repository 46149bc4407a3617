-- Begin a retry of a final batch's items in place. The retry runs in pages so that no call
-- holds Redis for long, however many items it resets: this script, then retry_page.lua for
-- each page of the items retry_scan.lua found, then retry_end.lua. `resetting`
-- (`<generation>:<until epoch ms>`) marks the batch as being retried meanwhile: another retry
-- may not begin until this one ends, or lapses (a request cut off half-way; its pages reset
-- stay reset, and a retry after it finds the rest).
-- KEYS: the batch's keys (see batch.lua).
-- ARGV: the batch's `retries` count when its items were scanned ('0' for none), how long
--   (ms) this retry may take before another may begin.
-- Returns 1 when begun; -1 when the batch is not final; -2 when there is no such batch; -3
-- when it was retried, or is being retried, since its items were scanned; -4 when its token
-- budget (max_total_tokens) is spent: every retried item would be cancelled again.
local f = redis.call('HMGET', meta, 'status', 'retries', 'resetting', 'max_total_tokens',
  'input_tokens', 'output_tokens')
if not f[1] then return -2 end
if not FINAL[f[1]] then return -1 end
if (f[2] or '0') ~= ARGV[1] then return -3 end
local now = now_ms()
if f[3] and (tonumber(string.match(f[3], ':(%d+)$')) or 0) > now then return -3 end
local budget = tonumber(f[4])
if budget and (tonumber(f[5]) or 0) + (tonumber(f[6]) or 0) >= budget then return -4 end
redis.call('HSET', meta, 'resetting', ARGV[1] .. ':' .. (now + tonumber(ARGV[2])))
return 1
