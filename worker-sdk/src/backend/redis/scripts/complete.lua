-- KEYS: processing, attempts, stats, lease keys…; ARGV: n, tokens…, items…, digests….
local n = tonumber(ARGV[1])
local bad = check(3, 1, n)
if bad > 0 then return bad end
for i = 1, n do
  redis.call('LREM', KEYS[1], -1, ARGV[1 + n + i])
  redis.call('DEL', KEYS[3 + i])
  redis.call('HDEL', KEYS[2], ARGV[1 + 2 * n + i])
end
redis.call('HINCRBY', KEYS[3], 'completed', n)
return 0
