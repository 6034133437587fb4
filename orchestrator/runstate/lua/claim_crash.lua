-- KEYS: heartbeats, heartbeat records, the task run's hash; ARGV: task run id, stale cutoff
-- Claims one stale entry (or nothing: fresh again, or another detector took it). Returns
-- {'restarted', record} when an execution began after the one that went silent (a redelivered
-- message: it heartbeats for itself), else {'crashed', record}, having made every message of that
-- attempt or an older one stale, so none of them starts beside the next attempt.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
local raw = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if not raw then return false end
local record = cjson.decode(raw)
if record['body'] then return {'crashed', raw} end  -- a dynamic body: no task run hash, no message to fence
local starts = tonumber(redis.call('HGET', KEYS[3], 'starts') or '0')
if type(record['start']) == 'number' and starts > record['start'] then return {'restarted', raw} end
redis.call('HSET', KEYS[3], 'min_attempt', (tonumber(record['attempt']) or 1) + 1)
return {'crashed', raw}
