-- Refill an owner's heads (after its batches were cancelled or deleted, their jobs dropped).
-- ARGV: the owner. Returns how many chunks were dispatched.
return refill(ARGV[1])
