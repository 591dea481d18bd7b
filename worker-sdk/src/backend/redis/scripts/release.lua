-- KEYS: main, processing, attempts, lease keys…; ARGV: n, tokens…, items…, digests….
local n = tonumber(ARGV[1])
local bad = check(3, 1, n)
if bad > 0 then return bad end
for i = 1, n do
  local item = ARGV[1 + n + i]
  local digest = ARGV[1 + 2 * n + i]
  redis.call('LREM', KEYS[2], -1, item)
  redis.call('DEL', KEYS[3 + i])
  if redis.call('HINCRBY', KEYS[3], digest, -1) <= 0 then redis.call('HDEL', KEYS[3], digest) end
  redis.call('RPUSH', KEYS[1], item)
end
return 0
