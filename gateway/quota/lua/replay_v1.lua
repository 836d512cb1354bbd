-- replay_v1: append again a usage event that Redis lost before the billing worker read it
-- (the gateway that settled it still has it), charging it to a balance rebuilt since.
-- KEYS: 1 balance, 2 grants, 3 usage stream
-- ARGV: 1 the balance epoch the event was charged to ('' = none), then field, value pairs
--       of the event (without 'epoch')
-- Reply: the new stream entry id
-- A rebuilt balance (another epoch) never saw this charge, so it is charged here; with no
-- balance the rebuild to come counts it from the stream. The billing worker is idempotent
-- by request id, so a replay never charges the ledger twice.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local fields, alloc = {}, ''
for i = 2, #ARGV, 2 do
  if ARGV[i] == 'grants' then alloc = ARGV[i + 1] end
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
if epoch and epoch ~= ARGV[1] then
  local _, by_id = load_grants(KEYS[2])
  local parts = decode_alloc(alloc)
  charge_grants(KEYS[2], by_id, parts, parts, false)
end
fields[#fields + 1] = 'epoch'
fields[#fields + 1] = epoch or ''
fields[#fields + 1] = 'replayed'
fields[#fields + 1] = '1'
return redis.call('XADD', KEYS[3], '*', unpack(fields))
