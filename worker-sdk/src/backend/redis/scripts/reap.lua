-- The reaper. KEYS: main, processing, attempts, dead, reasons, stats,
-- unleased_since, lease keys…; ARGV: grace ms, max attempts, whole list (0/1),
-- n, items…, digests…. Answers how many items it moved.
local grace = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local moved = 0
local present = {}
for i = 1, n do
  local item = ARGV[4 + i]
  local digest = ARGV[4 + n + i]
  present[digest] = true
  if redis.call('EXISTS', KEYS[7 + i]) == 1 then
    redis.call('HDEL', KEYS[7], digest)
  else
    local seen = redis.call('HGET', KEYS[7], digest)
    if not seen then
      redis.call('HSET', KEYS[7], digest, now)
    elseif now - tonumber(seen) >= grace then
      redis.call('HDEL', KEYS[7], digest)
      if redis.call('LREM', KEYS[2], -1, item) == 1 then
        local attempts = tonumber(redis.call('HGET', KEYS[3], digest) or '0')
        if max > 0 and attempts >= max then
          redis.call('RPUSH', KEYS[4], item)
          redis.call('HSET', KEYS[5], digest, attempts .. ' ' .. now .. ' lease expired ' .. attempts .. ' times')
          redis.call('HDEL', KEYS[3], digest)
        else
          redis.call('LPUSH', KEYS[1], item)
          redis.call('HINCRBY', KEYS[6], 'retried', 1)
        end
        moved = moved + 1
      end
    end
  end
end
if ARGV[3] == '1' then
  for _, digest in ipairs(redis.call('HKEYS', KEYS[7])) do
    if not present[digest] then redis.call('HDEL', KEYS[7], digest) end
  end
end
return moved
