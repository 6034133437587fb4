-- KEYS: flow run hash ; ARGV: result key prefix. The record and its referenced results at once.
local out = {redis.call('HGETALL', KEYS[1])}
local refs = redis.call('HGET', KEYS[1], 'result_refs')
if refs then
  for _, id in ipairs(cjson.decode(refs)) do table.insert(out, redis.call('GET', ARGV[1] .. id) or false) end
end
return out
