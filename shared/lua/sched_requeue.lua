-- Chunks dispatched before must run again (retried in place, or found on no queue): they go
-- into the batch's redo set, dispatched before its cursor moves on. A chunk the cursor has not
-- reached yet needs nothing: it will be dispatched anyway.
-- ARGV: the batch, then chunk numbers. Answers how many chunks were dispatched.
local batch = ARGV[1]
local owner = owner_of(batch)
if not owner then return answer(0, 0, nil) end
local meta, redo = given(BATCH_T, batch), given(REDO_T, batch)
if not (meta and redo) then return answer(0, 0, owner) end
local f = redis.call('HMGET', meta, 'sched_next', 'total', 'chunk_size', 'status')
if FINAL[f[4]] then return answer(0, 0, owner) end  -- finished meanwhile: nothing runs again
local cursor = tonumber(f[1] or math.ceil(tonumber(f[2]) / tonumber(f[3])))
for i = 2, #ARGV do
  local chunk = tonumber(ARGV[i])
  if chunk < cursor then redis.call('ZADD', redo, 'NX', chunk, chunk) end
end
local rotation = given(ROTATION_T, owner)
if rotation then join(batch, rotation) end
return answer(0, refill(owner), owner)
