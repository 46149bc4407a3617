-- A run lets go of its share of the batch: it drained (every item's call sent) or ended. A
-- run whose job another worker holds leaves it to that worker (a claim that is gone, deleted
-- by arq with a stalled worker's run, does not stop it). With due_ms >= 0 the job is handed
-- back, due in that many ms (SIGTERM: at once; a Redis outage: later), and the chunk feeds its
-- batch still, unless `feeds` is 0 (a chunk waiting at the provider's Batch API takes no place
-- in its batch's window); else (-1) it stops feeding. Then the batch rejoins its owner's
-- rotation, whose heads are refilled.
-- ARGV: the job, its batch, its chunk, the worker, due_ms, feeds (1 or 0). Outcome: 1 if
-- released, else 0.
local job, batch, chunk, worker, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local feeds = ARGV[6] ~= '0'
local claim = given(CLAIM_T, job) or error('the job\'s claim was not given')
local holder = redis.call('GET', claim)
if holder and holder ~= worker then return answer(0, 0, nil) end
if due >= 0 then
  redis.call('ZADD', QUEUE, 'XX', now + due, job)  -- XX: a job no longer queued stays so
end
local owner = owner_of(batch)
if not owner then return answer(1, 0, nil) end
if due >= 0 and feeds then return answer(1, run_feeds(batch, chunk, owner), owner) end
local feeding, rotation = given(FEEDING_T, batch), given(ROTATION_T, owner)
if feeding then redis.call('SREM', feeding, chunk) end
if rotation then join(batch, rotation) end
return answer(1, refill(owner), owner)
