-- KEYS: the root's set of task runs, join pending, join signatures, tolerant set, stored inputs
-- ARGV: the prefix of a task run's downstream set (keys.downstream(''))
-- A run tree whose task runs are all final needs none of these again: they only route ends to the
-- task runs waiting for them. A flow retry writes those of the task runs it runs again anew.
-- Returns how many keys were removed.
-- finish_task_run.lua does the same in the call that completes the root flow run; this script serves
-- the trees that end otherwise (failed, crashed, timed out: a flow retry may follow).
local CHUNK = 1000  -- keys per UNLINK (Lua's C stack holds about 8000 unpacked arguments)
local doomed = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
local gone = 0
for _, trid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  doomed[#doomed + 1] = ARGV[1] .. trid
  if #doomed == CHUNK then
    gone = gone + redis.call('UNLINK', unpack(doomed))
    doomed = {}
  end
end
if #doomed > 0 then gone = gone + redis.call('UNLINK', unpack(doomed)) end
return gone
