-- KEYS: task hash, finals, events, stored inputs, heartbeats, heartbeat records ; ARGV: trid, ttl,
--       fields json, event json, '1' to fetch stored inputs, crash record json ('' = none), now,
--       heartbeat cutoff ('' = the message is no redelivery), result keys to prefetch...
-- Returns 0 when the task run is already final, -1 when a newer attempt was sent (this message is
-- stale: the crash detector ran the task again), -2 when the message is a broker redelivery and the
-- task run's heartbeat is newer than the cutoff (the execution that took it first still runs: RabbitMQ
-- gave back the message of a lost connection; should that execution die, the crash detector takes over),
-- else {start number, stored inputs or nil, results...}
-- (the start number counts every execution that began, redeliveries too; the crash detector compares it).
-- A crash record puts the execution under the crash detector from its first moment (heartbeats
-- renew it from then on), with the start number added so the detector knows which execution it is.
-- Final: in the tree's finals, or (once a completed tree's finals are gone: finish_task_run.lua) in the
-- task run's own record, which keeps its final state as long as the run is kept.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[3])
local own = redis.call('HMGET', KEYS[1], 'min_attempt', 'state', 'starts')
if own[2] and FINAL[own[2]] then return 0 end
local newest = own[1]
if newest and tonumber(fields['attempts']) < tonumber(newest) then return -1 end
if ARGV[8] ~= '' then
  local beat = redis.call('ZSCORE', KEYS[5], ARGV[1])
  if beat and tonumber(beat) > tonumber(ARGV[8]) then return -2 end
end
local start = (tonumber(own[3]) or 0) + 1  -- counted in the one HSET below (no HINCRBY of its own)
local flat = {'starts', start}  -- one HSET of every field (one command per field before)
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'event', ARGV[4])
local out = {start, false}
if ARGV[5] == '1' then out[2] = redis.call('HGET', KEYS[4], ARGV[1]) end
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
  redis.call('HSET', KEYS[6], ARGV[1], string.sub(ARGV[6], 1, -2) .. ',"start":' .. out[1] .. '}')
end
for i = 9, #ARGV do table.insert(out, redis.call('GET', ARGV[i])) end
return out
