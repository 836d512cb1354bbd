-- credit_v2: add a grant of purchased credits to a balance that exists, once per grant id.
-- A missing balance means Redis lost data; creating it from one purchase would forget what
-- was spent, so refuse. A grant id already present changes nothing: a purchase retried after
-- a crash (or applied by reconcile first) never credits twice.
-- KEYS: 1 balance, 2 grants
-- ARGV: 1 grant id, 2 credits, 3 expires ms (0: never), 4 models (comma-separated, '' = all)
-- Reply: {added 1|0, purchased total}, or nil when the balance is unknown
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local added = redis.call('HSETNX', KEYS[2], ARGV[1],
  table.concat({ARGV[2], '0', '0', ARGV[3], ARGV[4]}, '|'))
local grants = load_grants(KEYS[2])
local total = 0
for i = 1, #grants do total = total + grants[i].credits end
return {added, fmt(total)}
