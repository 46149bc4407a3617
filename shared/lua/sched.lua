-- What every scheduler script shares (`shared/scheduler.py` has the states and the events).
-- These scripts touch keys they derive (an owner's, its batches', arq's job records) besides
-- their KEYS, so they need one Redis server, as arq's queue does. The header above gives the
-- key templates (`*_T`, one `%s`), arq's key prefixes and the constants.
local function key(template, id) return string.format(template, id) end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)

-- On the queue, due, and claimed by no worker: a job that is still waiting for a slot.
local function waiting(job)
  local score = redis.call('ZSCORE', QUEUE, job)
  return score ~= false and tonumber(score) <= now
    and redis.call('EXISTS', CLAIM_PREFIX .. job) == 0
end

-- On the queue or claimed: a job some worker will run, or runs.
local function live(job)
  return redis.call('ZSCORE', QUEUE, job) ~= false
    or redis.call('EXISTS', CLAIM_PREFIX .. job) == 1
end

-- At the back of its owner's rotation, unless it is in it already.
local function join(batch, owner)
  local rotation = key(ROTATION_T, owner)
  local last = redis.call('ZRANGE', rotation, -1, -1, 'WITHSCORES')
  local turn = last[2] and tonumber(last[2]) + 1 or 1
  redis.call('ZADD', rotation, 'NX', turn, batch)
end

-- Whether the batch can take another job slot now: it runs, it has a chunk not yet dispatched
-- (or to run again), and fewer chunks feeding than its window (its heads included).
local function eligible(batch)
  local meta = key(BATCH_T, batch)
  local f = redis.call('HMGET', meta, 'status', 'window', 'sched_next', 'total', 'chunk_size',
    'deadline_ms')
  if f[1] ~= STATUS.queued and f[1] ~= STATUS.in_progress then return false end
  if f[6] and now >= tonumber(f[6]) then return false end  -- overdue: the reconciler ends it
  local window = tonumber(f[2] or 1)
  local redo = key(REDO_T, batch)
  local chunks = math.ceil(tonumber(f[4]) / tonumber(f[5]))
  if tonumber(f[3] or chunks) >= chunks and redis.call('ZCARD', redo) == 0 then return false end
  local feeding = key(FEEDING_T, batch)
  if redis.call('SCARD', feeding) < window then return true end
  -- At its window: forget chunks whose job is gone (a run that could not say it ended).
  for _, chunk in ipairs(redis.call('SMEMBERS', feeding)) do
    if not live(batch .. ':' .. chunk) then redis.call('SREM', feeding, chunk) end
  end
  return redis.call('SCARD', feeding) < window
end

-- The batch's next chunk to run: one to run again first, else the cursor's (moved on).
local function next_chunk(batch)
  local again = redis.call('ZPOPMIN', key(REDO_T, batch))
  if again[1] then return tonumber(again[1]) end
  local meta = key(BATCH_T, batch)
  return redis.call('HINCRBY', meta, 'sched_next', 1) - 1
end

-- Queue a chunk's job as arq would enqueue it (`shared/jobs.py`: the JSON payload), scored
-- after every job dispatched before it and due at once: within the current millisecond, a
-- hundredth after the last (the clock), so jobs dispatched in one millisecond keep their order.
-- Scores go to Redis as text: Lua's own conversion would lose the hundredths. A job still on
-- the queue (a run handed back) keeps its place.
local function enqueue(batch, chunk)
  local job = batch .. ':' .. chunk
  local payload = '{"t":null,"f":"' .. RUN_CHUNK .. '","a":["' .. batch .. '",' ..
    string.format('%d', chunk) .. '],"k":{},"et":' .. string.format('%d', now) .. '}'
  redis.call('SET', JOB_PREFIX .. job, payload, 'PX', JOB_EXPIRES_MS)
  local last = tonumber(redis.call('GET', CLOCK))
  if last and last > now + 1000 then last = nil end  -- Redis's clock went back: follow it
  local score = string.format('%.2f', math.max(now - 0.99, (last or 0) + 0.01))
  redis.call('SET', CLOCK, score)
  redis.call('ZADD', QUEUE, 'NX', score, job)
  return job
end

-- Give the owner's batches their turns until it has HEADS_PER_OWNER jobs waiting on the queue:
-- round-robin over its rotation, a batch that took a turn and can take another going to the
-- back (so a key with one batch keeps as many heads as a key with four: keys share alike).
-- Returns how many chunks were dispatched.
local function refill(owner)
  local heads, rotation = key(HEADS_T, owner), key(ROTATION_T, owner)
  local count = 0
  for _, job in ipairs(redis.call('SMEMBERS', heads)) do
    if waiting(job) then count = count + 1 else redis.call('SREM', heads, job) end
  end
  local dispatched = 0
  while count < HEADS_PER_OWNER do
    local turn = redis.call('ZRANGE', rotation, 0, 0)
    if not turn[1] then break end
    local batch = turn[1]
    redis.call('ZREM', rotation, batch)
    if eligible(batch) then
      local chunk = next_chunk(batch)
      local job = enqueue(batch, chunk)
      redis.call('SADD', key(FEEDING_T, batch), chunk)
      redis.call('SADD', heads, job)
      count, dispatched = count + 1, dispatched + 1
      join(batch, owner)
    end
  end
  return dispatched
end

-- The owner of a batch, or nil when the batch is gone.
local function owner_of(batch)
  return redis.call('HGET', key(BATCH_T, batch), 'owner') or nil
end

-- A run's chunk feeds its batch (unless the batch is final), which rejoins its owner's
-- rotation; the owner's heads are refilled.
local function run_feeds(batch, chunk, owner)
  if not FINAL[redis.call('HGET', key(BATCH_T, batch), 'status')] then
    redis.call('SADD', key(FEEDING_T, batch), chunk)
  end
  join(batch, owner)
  refill(owner)
end
