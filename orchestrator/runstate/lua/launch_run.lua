-- A new run tree's launch in one atomic step: its records written, then its first messages sent.
-- KEYS: the root flow run's hash (it must not exist yet: a run is launched once)
-- ARGV: n (how many writes), then each write as its argument count and its arguments
--       (command first: one of WRITES), then the messages: (command, key or channel, value)
--       triples, LPUSH or PUBLISH (kombu's Redis transport, as messaging.captured_sends captures them)
-- Returns 1: written and sent; 0: the root's record existed (this same call ran before, a retry
-- after its reply was lost): nothing written or sent again. Everything is checked before any write.
local WRITES = {hset = true, expire = true, set = true, sadd = true, xadd = true, zadd = true}
local writes = {}
local i = 2
for n = 1, tonumber(ARGV[1]) do
  local argc = tonumber(ARGV[i])
  local command = string.lower(ARGV[i + 1])
  if not WRITES[command] then return redis.error_reply('launch_run: not a record write: ' .. command) end
  writes[n] = {i + 1, i + argc}
  i = i + argc + 1
end
local sends = i
if (#ARGV - sends + 1) % 3 ~= 0 then return redis.error_reply('launch_run: sends are not triples') end
for j = sends, #ARGV, 3 do
  local command = string.lower(ARGV[j])
  if command ~= 'lpush' and command ~= 'publish' then return redis.error_reply('launch_run: not a send: ' .. command) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for _, span in ipairs(writes) do redis.call(unpack(ARGV, span[1], span[2])) end
for j = sends, #ARGV, 3 do redis.call(ARGV[j], ARGV[j + 1], ARGV[j + 2]) end
return 1
