-- Add a webhook endpoint for an owner, within the most one owner may have.
-- KEYS: the owner's endpoints. ARGV: the endpoint's id, its JSON, the most endpoints.
-- Returns 1 when added, 0 when the owner already has the most.
local endpoints = KEYS[1]
if redis.call('HLEN', endpoints) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', endpoints, ARGV[1], ARGV[2])
return 1
