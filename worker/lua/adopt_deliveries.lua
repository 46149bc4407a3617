-- Move deliveries an older worker scheduled in the one set of every owner's deliveries
-- (`keys.LEGACY_WEBHOOK_DUE`) to their owner's own set, each with its score (a lease an older
-- worker holds stays one: that worker's settle then finds it LOST, and the delivery is
-- attempted again after the lease, at least once as ever). One whose hash is gone leaves.
-- KEYS: the legacy set, the owners with deliveries, when each was last served, then for each
--   delivery its hash and its owner's due set. ARGV: each delivery's id and owner (as the caller read it; in KEYS order).
-- Returns how many were moved.
local legacy, owners, served = KEYS[1], KEYS[2], KEYS[3]
local moved = 0
for c = 1, (#KEYS - 3) / 2 do
  local key, due = KEYS[2 * c + 2], KEYS[2 * c + 3]
  local id, owner = ARGV[2 * c - 1], ARGV[2 * c]
  local score = redis.call('ZSCORE', legacy, id)
  if score then
    local actual = redis.call('HGET', key, 'owner')
    if not actual then
      redis.call('ZREM', legacy, id)
    elseif actual == owner then
      redis.call('ZADD', due, score, id)
      redis.call('ZREM', legacy, id)
      rescore(owners, served, due, owner)
      moved = moved + 1
    end
  end
end
return moved
