-- KEYS: flow run hash ; ARGV: result key prefix. What a run's waiter reads of its end, in one flat reply:
-- the record's state, name, message, returns and result_refs (false where absent: all five for an
-- unknown run), then, only once the run is Completed, the text of each result result_refs names
-- (false where gone), in its order.
-- Only these fields: redis-py parses a reply element by element in Python, and the whole record
-- (HGETALL, about 35 elements) cost a waiter more than the rest of its read.
-- Only a Completed run's results: every reader uses them only then, and a waiter wakes every second
-- while the run goes on (flow_runs.wait_outcome); reading a 5,000-task run's results at each wake-up
-- held Redis (and every worker with it) for about 12 ms each time.
local out = redis.call('HMGET', KEYS[1], 'state', 'name', 'message', 'returns', 'result_refs')
if out[5] and out[1] == 'Completed' then
  for _, id in ipairs(cjson.decode(out[5])) do table.insert(out, redis.call('GET', ARGV[1] .. id) or false) end
end
return out
