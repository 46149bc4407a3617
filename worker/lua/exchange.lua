-- Exchange slots of one batch's concurrency: set this holder's slots to `keep` plus what it may
-- take of `want` more, and say how many other holders are still asking. Every field is
-- `held:expires_ms:wanted`; lapsed fields are dropped. Idempotent: the holder states its
-- absolute holding, so a retried call changes nothing more. `keep` is cut to what the others
-- leave: a holder whose entry lapsed while Redis was away may find its slots taken by then,
-- and it must not add them on top.
-- KEYS: the batch's slots hash, the batch's hash. ARGV: holder, keep, want, limit, ttl ms.
-- Returns {kept, granted, askers}.
local key, holder = KEYS[1], ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 0 then  -- the batch was deleted: hold nothing
  redis.call('DEL', key)
  return {0, 0, 0}
end
local keep, want, limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                               tonumber(ARGV[5])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local others, askers = 0, 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  if fields[i] ~= holder then
    local held, expires, wanted = string.match(fields[i + 1], '^(%d+):(%d+):(%d+)$')
    if not held or tonumber(expires) < now then
      redis.call('HDEL', key, fields[i])
    else
      others = others + tonumber(held)
      if tonumber(wanted) > 0 then askers = askers + 1 end
    end
  end
end
keep = math.max(0, math.min(keep, limit - others))
local grant = math.min(want, limit - others - keep)
if askers > 0 then grant = math.min(grant, math.ceil(limit / (askers + 1)) - keep) end
if grant < 0 then grant = 0 end
if keep + grant == 0 and want == 0 then
  redis.call('HDEL', key, holder)
else
  redis.call('HSET', key, holder, (keep + grant) .. ':' .. (now + ttl) .. ':' .. (want - grant))
  redis.call('PEXPIRE', key, ttl)
end
return {keep, grant, askers}
