-- FAILED and FINAL are tables of state names, defined by runstate.scripts from orchestrator.states.
-- KEYS: task hash, finals, events, remaining, result, join pending, join sigs, root flow run, root latch,
--       tolerant set, waiters of the root flow run, delayed messages, the root's wake-up list,
--       the root's set of task runs, stored inputs
-- ARGV: trid, ttl, fields json, event json, state, result text ('' = none), downstream key,
--       now, root run id, the Completed event of the root flow run (text of runstate.events.encode),
--       the grace (seconds) a completed tree's finals and count keep, the prefix of a task run's
--       downstream set (keys.downstream('')),
--       then messages sent with this end: (command, key or channel, value) triples, LPUSH or PUBLISH,
--       and the acknowledgement of the message that ran it: ZREM and HDEL of kombu's unacked index and record
-- Returns {left, flow, ready signatures...}: left = task runs of the tree not final (-1: this one
-- already was), flow = 'completed' when this call ended the root flow run Completed (and removed the
-- tree's edges, as forget_tree_edges.lua does), 'decide' when the tree is done but the run did not
-- complete (Python writes the detailed message and removes the edges);
-- {-1, 'sent'}: this same call ran before (a retry after its reply was lost) and sent its messages.
local CHUNK = 1000  -- arguments per command built with unpack (Lua's C stack holds about 8000)
local WITH_END = {lpush = true, publish = true, zrem = true, hdel = true}
for i = 13, #ARGV, 3 do  -- broker pushes, their task-sent events, an acknowledgement; nothing else (checked before any write)
  local command = string.lower(ARGV[i])
  if not WITH_END[command] then return redis.error_reply('finish_task_run: not a send: ' .. command) end
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[5]) == 0 then
  if #ARGV > 12 and redis.call('HGET', KEYS[1], 'ended') == cjson.decode(ARGV[3])['ended'] then return {-1, 'sent'} end
  return {-1, ''}
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[5], ARGV[6], 'EX', ARGV[2]) end
local flat = {}  -- one HSET of every field (one command per field before)
for k, v in pairs(cjson.decode(ARGV[3])) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'event', ARGV[4])
local left = redis.call('DECR', KEYS[4])
local out = {left, ''}
for _, d in ipairs(redis.call('SMEMBERS', ARGV[7])) do
  if redis.call('HEXISTS', KEYS[6], d) == 1 then
    if redis.call('HINCRBY', KEYS[6], d, -1) == 0 then
      -- after a failure only tolerant tasks are sent (they decide); the rest are marked
      if redis.call('HEXISTS', KEYS[2], d) == 0 and
         (ARGV[5] == 'Completed' or redis.call('SISMEMBER', KEYS[10], d) == 1) then
        table.insert(out, redis.call('HGET', KEYS[7], d))
      end
    end
  end
end
local root = redis.call('HMGET', KEYS[8], 'state', 'mode', 'body_error')
local current = root[1]
if root[2] == 'dynamic' then  -- wake a dynamic body that may wait for this task run (BLPOP)
  redis.call('LPUSH', KEYS[13], ARGV[1])
  redis.call('LTRIM', KEYS[13], 0, 0)  -- one wake-up is enough: the body reads the states it waits for
  redis.call('EXPIRE', KEYS[13], ARGV[2])
end

-- Whether every decider of the root flow run completed (read only once the tree is done).
local function deciders_completed()
  -- records.DECIDERS_ARE_REFS: the deciders are the result_refs (one read for both fields)
  local raw = redis.call('HMGET', KEYS[8], 'deciders', 'result_refs')
  local text = raw[1]
  if text == '"result_refs"' then text = raw[2] end
  if not text then return true end
  local ids = cjson.decode(text)
  for first = 1, #ids, CHUNK do
    local states = redis.call('HMGET', KEYS[2], unpack(ids, first, math.min(first + CHUNK - 1, #ids)))
    for i = 1, #states do
      local st = states[i]
      if (not st) or FAILED[st] then return false end
    end
  end
  return true
end

-- A completed tree's edges (forget_tree_edges.lua): each task run's downstream set, the join tables,
-- the tolerant set and the kept inputs only route ends to waiting task runs, and it is never retried.
local function forget_edges()
  local doomed = {KEYS[6], KEYS[7], KEYS[10], KEYS[15]}
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[14])) do
    doomed[#doomed + 1] = ARGV[12] .. t
    if #doomed == CHUNK then
      redis.call('UNLINK', unpack(doomed))
      doomed = {}
    end
  end
  if #doomed > 0 then redis.call('UNLINK', unpack(doomed)) end
end

if left == 0 and FINAL[current] then
  out[2] = 'final'  -- ended already (timed out, cancelled): never overwritten
elseif left == 0 then
  out[2] = 'decide'
  local body_error = root[3]
  if ((not body_error) or body_error == '') and deciders_completed() then
    redis.call('HSET', KEYS[8], 'state', 'Completed', 'ended', ARGV[8], 'message', '')
    redis.call('EXPIRE', KEYS[8], ARGV[2])
    redis.call('XADD', KEYS[3], '*', 'event', ARGV[10])
    redis.call('LPUSH', KEYS[9], 'Completed')
    redis.call('EXPIRE', KEYS[9], ARGV[2])
    -- parent nodes waiting for this run (a run of its own started by a plan node) are due now
    local waiting = redis.call('LRANGE', KEYS[11], 0, -1)
    if #waiting > 0 then
      for _, m in ipairs(waiting) do redis.call('ZADD', KEYS[12], ARGV[8], m) end
      redis.call('DEL', KEYS[11])
    end
    forget_edges()
    out[2] = 'completed'
  end
end
if out[2] == 'completed' then
  -- a completed tree is never retried: its finals and count only serve late messages now, which
  -- find each task run's record final too (start_task_run.lua); they go after a grace, not the TTL
  redis.call('EXPIRE', KEYS[2], ARGV[11])
  redis.call('EXPIRE', KEYS[4], ARGV[11])
else
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
for i = 13, #ARGV, 3 do redis.call(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end  -- messages sent (and acknowledged) with this end
return out
