-- key_spend_rebuild_v1: compare a capped key's counter with what the ledger says it spent in
-- the current period and what its reservations in flight hold, and ('apply') replace it,
-- atomically with respect to admission and settlement.
-- KEYS: 1 key cap counter, 2 reservations, 3 usage stream
-- ARGV: 1 'check'|'apply', 2 account id, 3 key id, 4 credit_period, 5 the period id the caller
--       counted for, 6 that period's start ms, 7 id of the last stream entry the caller counted
--       ('' = none), 8 what the caller counted: the ledger's charges of the key since the
--       period's start plus those of stream entries up to ARGV[7] the ledger does not have
-- Reply: {'moved', period id}: the period changed since the caller counted; nothing done
--        {'ok', period id, spent in Redis, held in Redis, spent counted, held counted}
--
-- What the caller could not see is added here, as rebuild_v2.lua does for grants: the
-- charges of the key's entries appended after ARGV[7] (settled meanwhile, not yet in the
-- ledger; a charge counts in the period of its settlement time) and the reserves the key's
-- capped reservations in flight hold.
local mode, account, key_id = ARGV[1], ARGV[2], ARGV[3]
local period = cap_period(ARGV[4], now_ms())
if period ~= ARGV[5] then return {'moved', period} end
local since = tonumber(ARGV[6])
local want_spent, want_held = tonumber(ARGV[8]), 0

local start = '-'
if ARGV[7] ~= '' then start = '(' .. ARGV[7] end
local seen = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[3], start, '+')) do
  local f, e = entry[2], {}
  for j = 1, #f, 2 do e[f[j]] = f[j + 1] end
  if e.account_id == account and e.key_id == key_id and e.request_id and not seen[e.request_id]
      and (tonumber(e.finished_at_ms) or 0) >= since then
    seen[e.request_id] = true
    want_spent = want_spent + (tonumber(e.charge) or 0)
  end
end
for _, raw in ipairs(redis.call('HVALS', KEYS[2])) do
  local r = decode_record(raw)
  if r.key_id == key_id and r.key_cap == 1 then want_held = want_held + r.reserve end
end

local had, spent, held = read_spend(KEYS[1])
spent = spent_in(period, had, spent)
if mode == 'apply' and (spent ~= want_spent or held ~= want_held or had ~= period) then
  write_spend(KEYS[1], period, want_spent, want_held)
end
return {'ok', period, spent, held, want_spent, want_held}
