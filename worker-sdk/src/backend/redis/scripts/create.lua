-- KEYS: settings; ARGV: max attempts, lease ms. Answers 1 created, 0 same, -1 different.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local have = redis.call('HMGET', KEYS[1], 'max_attempts', 'lease_ms')
  if have[1] == ARGV[1] and have[2] == ARGV[2] then return 0 end
  return -1
end
redis.call('HSET', KEYS[1], 'max_attempts', ARGV[1], 'lease_ms', ARGV[2])
return 1
