-- A worker begins a run of a chunk's job (arq has just claimed it): the claim becomes this
-- worker's, with its lease, and the job's queue score the lease's end, so that it leaves the
-- window of due jobs arq reads (a running job would hide the waiting ones behind it) and is
-- due again only if the lease lapses (the worker died). The job is no longer its owner's head,
-- the chunk feeds its batch, and the owner's heads are refilled.
-- ARGV: the job, its batch, its chunk, the worker, the lease ms. Returns 1 (0: batch gone).
local job, batch, chunk, worker, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('SET', CLAIM_PREFIX .. job, worker, 'PX', lease)
if redis.call('ZSCORE', QUEUE, job) then redis.call('ZADD', QUEUE, 'XX', now + lease, job) end
local owner = owner_of(batch)
if not owner then return 0 end
local meta = key(BATCH_T, batch)
if redis.call('HGET', meta, 'sched_head') == job then redis.call('HDEL', meta, 'sched_head') end
redis.call('SREM', key(HEADS_T, owner), job)
if not FINAL[redis.call('HGET', meta, 'status')] then
  redis.call('SADD', key(FEEDING_T, batch), chunk)
end
join(batch, owner)
refill(owner)
return 1
