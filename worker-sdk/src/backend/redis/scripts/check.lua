-- Checks that every lease key `KEYS[first + i]` holds token `ARGV[tok + i]`;
-- answers the 1-based index of the first that does not, or 0.
local function check(first, tok, n)
  for i = 1, n do
    if redis.call('GET', KEYS[first + i]) ~= ARGV[tok + i] then return i end
  end
  return 0
end
