-- A run lets go of its share of the batch: it drained (every item has its call started) or
-- ended. Only a run that still holds its job's claim may (one taken over leaves it to the
-- new owner). With due_ms >= 0 the job is handed back, due in that many ms (SIGTERM: at once;
-- a Redis outage: later), and the chunk still feeds its batch; else (-1) it stops feeding.
-- Then the batch rejoins its owner's rotation, whose heads are refilled.
-- ARGV: the job, its batch, its chunk, the worker, due_ms. Returns 1 if released, else 0.
local job, batch, chunk, worker, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('GET', CLAIM_PREFIX .. job) ~= worker then return 0 end
if due >= 0 then
  if redis.call('ZSCORE', QUEUE, job) then redis.call('ZADD', QUEUE, 'XX', now + due, job) end
end
local owner = owner_of(batch)
if not owner then return 1 end
if due < 0 then redis.call('SREM', key(FEEDING_T, batch), chunk) end
join(batch, owner)
refill(owner)
return 1
