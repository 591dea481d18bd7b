-- KEYS: main, dead, reasons, attempts; ARGV: n, items…, digests…. Answers how many moved.
local n = tonumber(ARGV[1])
local moved = 0
for i = 1, n do
  local item = ARGV[1 + i]
  local digest = ARGV[1 + n + i]
  if redis.call('LREM', KEYS[2], 1, item) == 1 then
    redis.call('HDEL', KEYS[3], digest)
    redis.call('HDEL', KEYS[4], digest)
    redis.call('RPUSH', KEYS[1], item)
    moved = moved + 1
  end
end
return moved
