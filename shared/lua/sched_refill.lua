-- Refill an owner's heads (after its batches were cancelled or deleted, their jobs dropped).
-- ARGV: the owner. Answers how many chunks were dispatched.
return answer(0, refill(ARGV[1]), ARGV[1])
