-- KEYS: expanded flag, remaining ; ARGV: children, ttl. Counts a map's children exactly once.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('INCRBY', KEYS[2], ARGV[1])
  return 1
end
return 0
