-- KEYS: the root's set of task runs, join pending, join signatures, tolerant set, stored inputs
-- ARGV: the prefix of a task run's downstream set (keys.downstream(''))
-- A run tree whose task runs are all final needs none of these again: they only route ends to the
-- task runs waiting for them. A flow retry writes those of the task runs it runs again anew.
-- Returns how many keys were removed.
local gone = 0
for _, trid in ipairs(redis.call('SMEMBERS', KEYS[1])) do gone = gone + redis.call('UNLINK', ARGV[1] .. trid) end
return gone + redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
