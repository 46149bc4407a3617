-- Record a run of a chunk as begun and count the chunk's runs not yet ended (one field
-- `<chunk>:<run>` each in attempts, deleted when the run ends); nothing for a deleted batch.
-- KEYS: the batch's keys (see batch.lua). ARGV: the chunk, the run's token.
-- Returns the chunk's runs that began and have not ended, this one included (0: no batch).
if redis.call('EXISTS', meta) == 0 then return 0 end
local prefix = ARGV[1] .. ':'
redis.call('HSET', attempts, prefix .. ARGV[2], 1)
-- On a final batch (a run begun as it finished, or after its attempts lapsed) HSET would make
-- a hash that never expires.
expire_with_batch(attempts)
local runs = 0
for _, run in ipairs(redis.call('HKEYS', attempts)) do
  if string.sub(run, 1, #prefix) == prefix then runs = runs + 1 end
end
return runs
