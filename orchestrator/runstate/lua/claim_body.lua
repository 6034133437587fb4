-- KEYS: the flow run's hash, heartbeats, heartbeat records ; ARGV: body attempt, body task run id,
--       crash record json, now
-- A worker takes an attempt of a dynamic body: only if the run is not final, that attempt is the
-- live one and nobody took it yet (a redelivered start or resume message finds it taken). Taking
-- it puts the body under the crash detector at once, in the same step, so no moment passes in
-- which the body is driven but unsupervised. Returns 1 when taken, else 0.
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or FINAL[state] then return 0 end
local live = tonumber(redis.call('HGET', KEYS[1], 'body_attempt') or '1')
if live ~= tonumber(ARGV[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'body_taken') or '0') >= live then return 0 end
redis.call('HSET', KEYS[1], 'body_taken', live)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return 1
