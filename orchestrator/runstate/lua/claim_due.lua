-- KEYS: delayed zset ; ARGV: now, limit, lease seconds. Claims due messages by pushing their
-- score a lease ahead: a dispatcher that dies before sending lets them come due again.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], item) end
return due
