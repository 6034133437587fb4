-- KEYS: finals, join pending, join sigs, tolerant set
-- ARGV: trid, signature, downstream-key prefix, '1' if tolerant, ups...
-- Registers a task that waits for upstreams (dynamic flows): atomically with _FINISH,
-- so an upstream that ends meanwhile is either seen final here or decrements the join.
local tolerant = ARGV[4] == '1'
if tolerant then redis.call('SADD', KEYS[4], ARGV[1]) end
local count = 0
for i = 5, #ARGV do
  local up = ARGV[i]
  redis.call('SADD', ARGV[3] .. up, ARGV[1])
  local st = redis.call('HGET', KEYS[1], up)
  if st then
    if st ~= 'Completed' and not tolerant then return {'blocked', up, st} end
  else
    count = count + 1
  end
end
if count > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], count)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
return {'ok', tostring(count)}
