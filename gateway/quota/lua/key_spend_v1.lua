-- key_spend_v1: what a key spent under its credit cap in the current period, by Redis time.
-- KEYS: 1 key cap counter
-- ARGV: 1 credit_period 'day'|'month'|'total'
-- Reply: {period id, spent in it, held by the key's requests in flight}
local period = cap_period(ARGV[1], now_ms())
local had, spent, held = read_spend(KEYS[1])
return {period, spent_in(period, had, spent), held}
