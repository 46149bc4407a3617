-- A worker begins a run of a chunk's job (arq has just claimed it): the claim becomes this
-- worker's, with its lease, and the job's queue score the lease's end, so that it leaves the
-- window of due jobs arq reads (a running job would hide the waiting ones behind it) and is
-- due again only if the lease lapses (the worker died). The job is no longer its owner's head,
-- the chunk feeds its batch, and the owner's heads are refilled.
-- A claim already in another worker's name (this worker stalled between arq's claim and this
-- script, and the job was taken over meanwhile) is left alone: this run must not run.
-- ARGV: the job, its batch, its chunk, the worker, the lease ms. Outcome: 1, 0 when the batch
-- is gone, -1 when another worker holds the job.
local job, batch, chunk, worker, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local claim = given(CLAIM_T, job) or error('the job\'s claim was not given')
local holder = redis.call('GET', claim)
if holder and holder ~= ARQ_CLAIM and holder ~= worker then return answer(-1, 0, nil) end
redis.call('SET', claim, worker, 'PX', lease)
redis.call('ZADD', QUEUE, 'XX', now + lease, job)  -- XX: a job no longer queued stays so
local owner = owner_of(batch)
if not owner then return answer(0, 0, nil) end
local heads = given(HEADS_T, owner)
if heads then redis.call('SREM', heads, job) end
return answer(1, run_feeds(batch, chunk, owner), owner)
