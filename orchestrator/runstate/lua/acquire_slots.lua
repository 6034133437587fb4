-- KEYS: limits hash, finals hash of the run tree, task run hash
-- ARGV: task run id, now, lease expiry, slots-key prefix, tags...
-- Returns {-1} when the task run is already final, {0, tag, limit, state, holders...} when
-- a limit is full (nothing taken), else {1, n, limited tags taken...}: the first n it did not hold,
-- the others it held already (the slots of another execution of the same task run id, which a
-- message refused at start must not give back).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {-1} end
local fresh, kept = {}, {}
for i = 5, #ARGV do
  local tag = ARGV[i]
  local limit = redis.call('HGET', KEYS[1], tag)
  if limit then
    local key = ARGV[4] .. tag
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
    local mine = redis.call('ZSCORE', key, ARGV[1])
    if (not mine) and redis.call('ZCARD', key) >= tonumber(limit) then
      local out = {0, tag, limit, redis.call('HGET', KEYS[3], 'state') or ''}
      for _, holder in ipairs(redis.call('ZRANGE', key, 0, 9)) do table.insert(out, holder) end
      return out
    end
    table.insert(mine and kept or fresh, tag)
  end
end
local out = {1, #fresh}
for _, tag in ipairs(fresh) do table.insert(out, tag) end
for _, tag in ipairs(kept) do table.insert(out, tag) end
for i = 3, #out do redis.call('ZADD', ARGV[4] .. out[i], ARGV[3], ARGV[1]) end
return out
