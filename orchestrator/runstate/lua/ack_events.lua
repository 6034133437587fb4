-- KEYS: the event stream ; ARGV: the recorder's consumer group, the stream ids it has written to the database...
-- Acknowledges the ids, then trims the stream below the oldest entry some consumer group still needs:
-- that group's oldest pending entry (read, not acknowledged), else the first entry it has not read.
-- Entries no group has read (no API ran) and entries read but not acknowledged (a recorder died
-- before its commit) are never trimmed, here or anywhere: XADD has no MAXLEN, so this is the
-- stream's only trim and it never drops an event the recorder does not hold. Returns the number
-- of entries trimmed.
for i = 2, #ARGV, 1000 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local keep_ms, keep_seq = nil, nil  -- the oldest id some group still needs
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local ms, seq = parse(info['last-delivered-id'])
  seq = seq + 1  -- the first entry this group has not read
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[1] > 0 then ms, seq = parse(pending[2]) end  -- its oldest entry read and not acknowledged
  if keep_ms == nil or ms < keep_ms or (ms == keep_ms and seq < keep_seq) then keep_ms, keep_seq = ms, seq end
end
if keep_ms == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', keep_ms, keep_seq))
