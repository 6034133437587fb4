-- KEYS: delayed set; ARGV: message, the score it was claimed with. Removes it only if still claimed.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
