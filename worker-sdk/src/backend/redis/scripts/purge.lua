-- KEYS: main. Answers how many items were removed.
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
