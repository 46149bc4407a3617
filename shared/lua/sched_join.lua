-- A batch may take job slots: it joins its owner's rotation, whose heads are refilled.
-- ARGV: the batch. Returns how many chunks were dispatched (0 also when the batch is gone).
local owner = owner_of(ARGV[1])
if not owner then return 0 end
join(ARGV[1], owner)
return refill(owner)
