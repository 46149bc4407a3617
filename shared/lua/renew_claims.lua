-- Renew a worker's claims on the jobs it runs: its own claim is extended, and a lapsed one
-- taken again while the job is still queued; either way the job's queue score moves to the
-- lease's new end (a running job is not due: it is due again only once its lease lapses).
-- A claim that names another worker, or a lapsed claim on a job that left the queue (its
-- batch was deleted, or it was finished), is not touched.
-- KEYS: the queue, then one claim key per job. ARGV: the worker, lease ms, then the job ids
--   (in the order of their claim keys).
-- Returns one number per job: 1 if the claim is this worker's now, 0 if this worker lost it.
local t = redis.call('TIME')
local due = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2])
local renewed = {}
for n = 2, #KEYS do
  local claim, job = KEYS[n], ARGV[n + 1]
  local owner = redis.call('GET', claim)
  local queued = redis.call('ZSCORE', KEYS[1], job)
  if owner == ARGV[1] then
    renewed[#renewed + 1] = redis.call('PEXPIRE', claim, ARGV[2])
  elseif owner or not queued then
    renewed[#renewed + 1] = 0
  else
    redis.call('SET', claim, ARGV[1], 'PX', ARGV[2])
    renewed[#renewed + 1] = 1
  end
  if renewed[#renewed] == 1 and queued then redis.call('ZADD', KEYS[1], 'XX', due, job) end
end
return renewed
