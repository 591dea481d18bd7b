-- KEYS: lease keys…; ARGV: lease ms, n, tokens….
local n = tonumber(ARGV[2])
local bad = check(0, 2, n)
if bad > 0 then return bad end
for i = 1, n do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 0
