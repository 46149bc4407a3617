-- Find the items of one page of a batch whose stored result has one of the given statuses:
-- what retry_page.lua may then reset. Reads only; run page by page so that no call holds Redis
-- for long (the pages are not atomic: retry_page.lua checks each item found again, at once).
-- KEYS: the batch's keys (see batch.lua). ARGV: the page's first index, the index after its
--   last, then the statuses to find.
-- Returns the indices found, in order.
local wanted = {}
for i = 3, #ARGV do wanted[ARGV[i]] = true end
local indices = {}
for index = tonumber(ARGV[1]), tonumber(ARGV[2]) - 1 do indices[#indices + 1] = index end
if #indices == 0 then return {} end
-- A stored result is JSON with its status first (`shared/results.py`); read it as JSON when
-- it is not.
local function status_of(raw)
  return string.match(raw, '^{"status":"([%w_]+)"') or cjson.decode(raw)['status']
end
local found = {}
for n, raw in ipairs(redis.call('HMGET', results, unpack(indices))) do
  if raw and wanted[status_of(raw)] then found[#found + 1] = indices[n] end
end
return found
