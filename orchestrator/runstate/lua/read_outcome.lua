-- KEYS: flow run hash ; ARGV: result key prefix. What a run's waiter reads of its end, in one flat reply:
-- the record's state, name, message, returns and result_refs (false where absent: all five for an
-- unknown run), then the text of each result result_refs names (false where gone), in its order.
-- Only these fields: redis-py parses a reply element by element in Python, and the whole record
-- (HGETALL, about 35 elements) cost a waiter more than the rest of its read.
local out = redis.call('HMGET', KEYS[1], 'state', 'name', 'message', 'returns', 'result_refs')
if out[5] then
  for _, id in ipairs(cjson.decode(out[5])) do table.insert(out, redis.call('GET', ARGV[1] .. id) or false) end
end
return out
