-- credit_v1: add purchased credits to a balance that exists. A missing balance means Redis
-- lost data; creating it from one purchase would forget what was spent, so refuse.
-- KEYS: 1 balance; ARGV: 1 credits
-- Reply: the new purchased total, or nil when the balance is unknown
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], 'purchased', ARGV[1])
