-- Lease `n` items from the tail of `KEYS[1]` if it still ends with the items the
-- client read. KEYS: main, processing, attempts, lease keys…; ARGV: lease ms, n,
-- items (tail first)…, tokens…, digests…. Answers `{-1}` on a mismatch, else
-- `{0, attempt…}`.
local n = tonumber(ARGV[2])
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
if #tail ~= n then return {-1} end
for i = 1, n do
  if tail[n - i + 1] ~= ARGV[2 + i] then return {-1} end
end
local out = {0}
for i = 1, n do
  redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3 + i], ARGV[2 + n + i], 'PX', ARGV[1])
  out[i + 1] = redis.call('HINCRBY', KEYS[3], ARGV[2 + 2 * n + i], 1)
end
return out
