-- expired_leases_v1: the leases of a shard whose deadline has passed by Redis time.
-- KEYS: 1 shard leases; ARGV: 1 limit
-- Reply: up to limit members '<account_id>|<request_id>', oldest deadline first
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(now_ms()), 'LIMIT', 0, ARGV[1])
