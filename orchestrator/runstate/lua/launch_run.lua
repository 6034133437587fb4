-- A new run tree's launch in one atomic step: its records written, then its first messages sent.
-- KEYS: the root flow run's hash (it must not exist yet: a run is launched once)
-- ARGV: the writes as JSON (a list of commands, each a list of its arguments as text, the command
--       first: one of WRITES; a number n stands for the binary argument ARGV[2 + n]), how many
--       binary arguments follow, those, then the messages: (command, key or channel, value)
--       triples, LPUSH or PUBLISH (kombu's Redis transport, as messaging.captured_sends captures them)
-- Returns 1: written and sent; 0: the root's record existed (this same call ran before, a retry
-- after its reply was lost): nothing written or sent again. Everything is checked before any write.
local WRITES = {hset = true, expire = true, set = true, sadd = true, xadd = true, zadd = true}
local writes = cjson.decode(ARGV[1])
for _, args in ipairs(writes) do
  local command = string.lower(args[1])
  if not WRITES[command] then return redis.error_reply('launch_run: not a record write: ' .. command) end
  for k, arg in ipairs(args) do
    if type(arg) == 'number' then args[k] = ARGV[2 + arg] end
  end
end
local sends = 3 + tonumber(ARGV[2])
if (#ARGV - sends + 1) % 3 ~= 0 then return redis.error_reply('launch_run: sends are not triples') end
for j = sends, #ARGV, 3 do
  local command = string.lower(ARGV[j])
  if command ~= 'lpush' and command ~= 'publish' then return redis.error_reply('launch_run: not a send: ' .. command) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for _, args in ipairs(writes) do redis.call(unpack(args)) end
for j = sends, #ARGV, 3 do redis.call(ARGV[j], ARGV[j + 1], ARGV[j + 2]) end
return 1
