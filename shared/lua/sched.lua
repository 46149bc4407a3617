-- What every scheduler script shares (`shared/scheduler.py` has the states and the events).
-- Every key a script touches is one it was given in KEYS: the queue and the clock, the
-- event's own job and batch, the owner's rotation and heads, and the batches and jobs a
-- refill may reach (what the owner's last call said it would: its `reach`). A key is used only
-- through `given`, which says whether it was: a refill that reaches a key it was not given
-- stops there, every step it took kept (each is whole), and the answer says so (`short`);
-- the caller calls again with the keys the answer names. Every other step of a script is
-- the same when run again, so a call made again repeats nothing.
-- The header above gives the key templates (`*_T`, one `%s`) and the constants.
local QUEUE, CLOCK = KEYS[1], KEYS[2]
local declared = {}
for _, name in ipairs(KEYS) do declared[name] = true end
local short = false

-- The key `template` names for `id` if it was given, else nil (and the answer will be short).
local function given(template, id)
  local name = string.format(template, id)
  if declared[name] then return name end
  short = true
  return nil
end

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)

-- Whether a worker has claimed the job (arq's claim, or a run's): nil when not given its key.
local function claimed(job)
  local claim = string.format(CLAIM_T, job)
  if not declared[claim] then return nil end
  return redis.call('EXISTS', claim) == 1
end

-- Due on the queue and not claimed: a job still waiting for a slot (one a worker runs is
-- scored at its lease's end; one arq has just claimed, if its claim was not given, counts as
-- waiting until its run begins a moment later, which refills the owner's heads).
local function waiting(job)
  local score = redis.call('ZSCORE', QUEUE, job)
  return score ~= false and tonumber(score) <= now and not claimed(job)
end

-- At the back of its owner's rotation, unless it is in it already.
local function join(batch, rotation)
  local last = redis.call('ZRANGE', rotation, -1, -1, 'WITHSCORES')
  local turn = last[2] and tonumber(last[2]) + 1 or 1
  redis.call('ZADD', rotation, 'NX', turn, batch)
end

-- The batch's next chunk, if it can take another job slot now: it runs, it has a chunk not
-- yet dispatched (or to run again: first), and fewer chunks feeding than its window (its
-- heads included). Returns the chunk's number as text and whether it is one to run again.
local function next_chunk(batch, meta, redo, feeding)
  local f = redis.call('HMGET', meta, 'status', 'window', 'sched_next', 'total', 'chunk_size',
    'deadline_ms')
  if f[1] ~= STATUS.queued and f[1] ~= STATUS.in_progress then return nil end
  if f[6] and now >= tonumber(f[6]) then return nil end  -- overdue: the reconciler ends it
  local chunks = math.ceil(tonumber(f[4]) / tonumber(f[5]))
  local cursor = tonumber(f[3] or chunks)
  local again = redis.call('ZRANGE', redo, 0, 0)[1]
  if not again and cursor >= chunks then return nil end
  local window = tonumber(f[2] or 1)
  if redis.call('SCARD', feeding) >= window then
    -- At its window: forget chunks whose job is gone, neither queued nor claimed (a run
    -- that could not say it ended). One whose claim was not given stops the refill.
    for _, chunk in ipairs(redis.call('SMEMBERS', feeding)) do
      local job = batch .. ':' .. chunk
      if not redis.call('ZSCORE', QUEUE, job) then
        if not given(CLAIM_T, job) then return nil end
        if not claimed(job) then redis.call('SREM', feeding, chunk) end
      end
    end
    if redis.call('SCARD', feeding) >= window then return nil end
  end
  if again then return again, true end
  return string.format('%d', cursor), false
end

-- Queue a chunk's job as arq would enqueue it (`shared/jobs.py`: the JSON payload), scored
-- after every job dispatched before it and due at once: within the current millisecond, a
-- hundredth after the last (the clock), so jobs dispatched in one millisecond keep their order.
-- Scores go to Redis as text: Lua's own conversion would lose the hundredths. A job still on
-- the queue (a run handed back) keeps its place.
local function enqueue(batch, chunk, job, record)
  local payload = '{"t":null,"f":"' .. RUN_CHUNK .. '","a":["' .. batch .. '",' .. chunk ..
    '],"k":{},"et":' .. string.format('%d', now) .. '}'
  redis.call('SET', record, payload, 'PX', JOB_EXPIRES_MS)
  local last = tonumber(redis.call('GET', CLOCK))
  if last and last > now + 1000 then last = nil end  -- Redis's clock went back: follow it
  local score = string.format('%.2f', math.max(now - 0.99, (last or 0) + 0.01))
  redis.call('SET', CLOCK, score)
  redis.call('ZADD', QUEUE, 'NX', score, job)
end

-- Give the owner's batches their turns until it has HEADS_PER_OWNER jobs waiting on the queue:
-- round-robin over its rotation, a batch that took a turn and can take another going to the
-- back (so a key with one batch keeps as many heads as a key with four: keys share alike).
-- Stops at a batch or job whose key it was not given. Returns how many chunks it dispatched.
local function refill(owner)
  local heads, rotation = given(HEADS_T, owner), given(ROTATION_T, owner)
  if not (heads and rotation) then return 0 end
  local count = 0
  for _, job in ipairs(redis.call('SMEMBERS', heads)) do
    if waiting(job) then count = count + 1 else redis.call('SREM', heads, job) end
  end
  local dispatched = 0
  while count < HEADS_PER_OWNER do
    local batch = redis.call('ZRANGE', rotation, 0, 0)[1]
    if not batch then break end
    local meta, redo, feeding = given(BATCH_T, batch), given(REDO_T, batch),
      given(FEEDING_T, batch)
    if not (meta and redo and feeding) then break end
    local chunk, again = next_chunk(batch, meta, redo, feeding)
    if short then break end
    local job = chunk and batch .. ':' .. chunk
    local record = job and given(JOB_T, job)
    if job and not record then break end
    redis.call('ZREM', rotation, batch)
    if job then
      if again then
        redis.call('ZREM', redo, chunk)
      else
        redis.call('HINCRBY', meta, 'sched_next', 1)
      end
      enqueue(batch, chunk, job, record)
      redis.call('SADD', feeding, chunk)
      redis.call('SADD', heads, job)
      count, dispatched = count + 1, dispatched + 1
      join(batch, rotation)
    end
  end
  return dispatched
end

-- The keys the owner's next refill may reach: its heads' claims, the first REACH_BATCHES
-- batches of its rotation and, for those whose keys this call was given, the jobs of their
-- next chunks and (at their window) the claims of their feeding chunks that are not queued.
local function reach(owner)
  local out = {}
  local rotation, heads = string.format(ROTATION_T, owner), string.format(HEADS_T, owner)
  if not (declared[rotation] and declared[heads]) then return out end
  for _, job in ipairs(redis.call('SMEMBERS', heads)) do
    table.insert(out, string.format(CLAIM_T, job))
  end
  for _, batch in ipairs(redis.call('ZRANGE', rotation, 0, REACH_BATCHES - 1)) do
    local meta, redo = string.format(BATCH_T, batch), string.format(REDO_T, batch)
    local feeding = string.format(FEEDING_T, batch)
    table.insert(out, meta)
    table.insert(out, redo)
    table.insert(out, feeding)
    if declared[meta] and declared[redo] and declared[feeding] then
      for _, chunk in ipairs(redis.call('ZRANGE', redo, 0, HEADS_PER_OWNER - 1)) do
        table.insert(out, string.format(JOB_T, batch .. ':' .. chunk))
      end
      local cursor = tonumber(redis.call('HGET', meta, 'sched_next'))
      if cursor then
        for chunk = cursor, cursor + REACH_CHUNKS - 1 do
          table.insert(out, string.format(JOB_T, batch .. ':' .. string.format('%d', chunk)))
        end
      end
      if redis.call('SCARD', feeding) >= tonumber(redis.call('HGET', meta, 'window') or 1) then
        for _, chunk in ipairs(redis.call('SMEMBERS', feeding)) do
          local job = batch .. ':' .. chunk
          if not redis.call('ZSCORE', QUEUE, job) then
            table.insert(out, string.format(CLAIM_T, job))
          end
        end
      end
    end
  end
  return out
end

-- A script's answer: its outcome, the chunks it dispatched, the owner, whether it stopped at
-- a key it was not given (1), and the keys the owner's next call should be given.
local function answer(outcome, dispatched, owner)
  return {outcome, dispatched, owner or '', short and 1 or 0, owner and reach(owner) or {}}
end

-- The owner of a batch, or nil when the batch is gone.
local function owner_of(batch)
  local meta = given(BATCH_T, batch)
  return meta and redis.call('HGET', meta, 'owner') or nil
end

-- A run's chunk feeds its batch (unless the batch is final), which rejoins its owner's
-- rotation; the owner's heads are refilled. Returns how many chunks were dispatched.
local function run_feeds(batch, chunk, owner)
  local meta, feeding = given(BATCH_T, batch), given(FEEDING_T, batch)
  if meta and feeding and not FINAL[redis.call('HGET', meta, 'status')] then
    redis.call('SADD', feeding, chunk)
  end
  local rotation = given(ROTATION_T, owner)
  if rotation then join(batch, rotation) end
  return refill(owner)
end
