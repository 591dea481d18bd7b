-- KEYS: main, processing, attempts, dead, reasons, stats, lease keys…;
-- ARGV: n, fatal (0/1), max attempts, reason, tokens…, items…, digests….
-- Answers `{bad index, 0}` or `{0, dead}`.
local n = tonumber(ARGV[1])
local bad = check(6, 4, n)
if bad > 0 then return {bad, 0} end
local fatal = ARGV[2] == '1'
local max = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = 0
for i = 1, n do
  local item = ARGV[4 + n + i]
  local digest = ARGV[4 + 2 * n + i]
  redis.call('LREM', KEYS[2], -1, item)
  redis.call('DEL', KEYS[6 + i])
  local attempts = tonumber(redis.call('HGET', KEYS[3], digest) or '1')
  if fatal or (max > 0 and attempts >= max) then
    redis.call('RPUSH', KEYS[4], item)
    redis.call('HSET', KEYS[5], digest, attempts .. ' ' .. now .. ' ' .. ARGV[4])
    redis.call('HDEL', KEYS[3], digest)
    dead = dead + 1
  else
    redis.call('LPUSH', KEYS[1], item)
    redis.call('HINCRBY', KEYS[6], 'retried', 1)
  end
end
return {0, dead}
