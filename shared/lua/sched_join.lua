-- A batch may take job slots: it joins its owner's rotation, whose heads are refilled.
-- ARGV: the batch. Answers how many chunks were dispatched (0 also when the batch is gone).
local owner = owner_of(ARGV[1])
if not owner then return answer(0, 0, nil) end
local rotation = given(ROTATION_T, owner)
if rotation then join(ARGV[1], rotation) end
return answer(0, refill(owner), owner)
