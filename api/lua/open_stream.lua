-- Open an event stream for an owner, within its ceiling of open streams (across every API
-- process). Each open stream is an entry whose score is when it lapses unless renewed, so a
-- stream whose API process died stops counting within one lease.
-- KEYS: the owner's open streams. ARGV: the stream's token, the ceiling, lease ms.
-- Returns 1 when opened, 0 when the owner already holds the ceiling.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
