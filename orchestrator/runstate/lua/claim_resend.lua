-- KEYS: the task run's hash, finals, join pending ; ARGV: trid
-- A resumed dynamic body found a call it had recorded whose task run never began: its message may
-- be lost (the body's worker died between recording the call and sending it) or merely queued.
-- Returns the attempt number to send it again with, having made every older attempt's message
-- stale (so a queued one does not run beside it); 0 when it is final, began, or still waits for
-- its upstreams (then the message that finishes them sends it).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'starts') or '0') > 0 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'min_attempt') or '1') + 1
redis.call('HSET', KEYS[1], 'min_attempt', attempt)
return attempt
