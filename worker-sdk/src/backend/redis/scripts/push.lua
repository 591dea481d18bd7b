-- KEYS: main, sealed; ARGV: items…. Answers -1 when sealed, else the list length.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
return redis.call('RPUSH', KEYS[1], unpack(ARGV))
