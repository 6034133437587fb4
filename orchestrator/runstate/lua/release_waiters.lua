-- A flow run became final: the messages waiting for it are due now (the delayed sender sends them).
-- KEYS: waiters list of the run, delayed sorted set
-- ARGV: now
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, m in ipairs(items) do redis.call('ZADD', KEYS[2], ARGV[1], m) end
if #items > 0 then redis.call('DEL', KEYS[1]) end
return #items
