-- A run lets go of its share of the batch: it drained (every item's call sent) or ended. A
-- run whose job another worker holds leaves it to that worker (a claim that is gone, deleted
-- by arq with a stalled worker's run, does not stop it). With due_ms >= 0 the job is handed
-- back, due in that many ms (SIGTERM: at once; a Redis outage: later), and the chunk feeds its
-- batch still; else (-1) it stops feeding. Then the batch rejoins its owner's rotation, whose
-- heads are refilled.
-- ARGV: the job, its batch, its chunk, the worker, due_ms. Returns 1 if released, else 0.
local job, batch, chunk, worker, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local holder = redis.call('GET', CLAIM_PREFIX .. job)
if holder and holder ~= worker then return 0 end
if due >= 0 then
  redis.call('ZADD', QUEUE, 'XX', now + due, job)  -- XX: a job no longer queued stays so
end
local owner = owner_of(batch)
if not owner then return 1 end
if due < 0 then
  redis.call('SREM', key(FEEDING_T, batch), chunk)
  join(batch, owner)
  refill(owner)
else
  run_feeds(batch, chunk, owner)
end
return 1
