-- withdraw_v1: take credits back from an account's grants (a debit adjustment, a refund),
-- atomically with admission and settlement, once per operation id.
-- KEYS: 1 balance, 2 grants, 3 withdrawals (HASH operation id -> outcome)
-- ARGV: 1 operation id, 2 mode 'amount'|'grant',
--       3 'amount': the credits to take; 'grant': the grant's id
--       4 'grant': the earliest expiry the closed grant may get (the ledger's validity start + 1)
-- Reply: nil when the balance is unknown (Redis lost it: nothing is taken from a guess);
--        {'missing'} when mode 'grant' names a grant Redis does not hold (nothing recorded);
--        {'new'|'dup', outcome}; a repeated operation id answers its first outcome, changing
--        nothing, whatever the arguments.
-- Outcome (gateway/quota/withdrawals.py reads it, rebuild_v2.lua applies it):
--   'applied|at ms|available|closed grant|closed expiry|allocation' or
--   'short|at ms|available||0|' (nothing taken: the live credits were fewer than asked).
-- 'amount' takes the credits from the live grants (any model) in drawing order, lowering
-- their credits: only what is neither reserved nor spent, so no reservation in flight is
-- touched and reserved + spent <= credits still holds. 'grant' takes all of one grant's
-- unreserved, unspent rest (live or expired) and closes it (expiry now, never later than it
-- was), so what its reservations release later lapses as expired.
local op, mode = ARGV[1], ARGV[2]
local done = redis.call('HGET', KEYS[3], op)
if done then return {'dup', done} end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = now_ms()
local grants, by_id = load_grants(KEYS[2])
local outcome
if mode == 'amount' then
  local wanted = tonumber(ARGV[3])
  local free, available = {}, 0
  for i = 1, #grants do
    local g = grants[i]
    local rest = g.credits - g.reserved - g.spent
    if rest > 0 and grant_live(g, now) then
      free[#free + 1] = {g.id, rest}
      available = available + rest
    end
  end
  if available < wanted then
    outcome = table.concat({'short', fmt(now), fmt(available), '', '0', ''}, '|')
  else
    local alloc = take(free, wanted)
    for i = 1, #alloc do
      if alloc[i][2] > 0 then
        local g = by_id[alloc[i][1]]
        g.credits = g.credits - alloc[i][2]
        redis.call('HSET', KEYS[2], g.id, encode_grant(g))
      end
    end
    outcome = table.concat({'applied', fmt(now), fmt(available), '', '0', encode_alloc(alloc)}, '|')
  end
elseif mode == 'grant' then
  local g = by_id[ARGV[3]]
  if not g then return {'missing'} end
  local rest = math.max(0, g.credits - g.reserved - g.spent)
  local close = math.max(now, tonumber(ARGV[4]))
  if g.expires ~= 0 and g.expires < close then close = g.expires end
  g.credits, g.expires = g.credits - rest, close
  redis.call('HSET', KEYS[2], g.id, encode_grant(g))
  outcome = table.concat({'applied', fmt(now), fmt(rest), g.id, fmt(close),
                          encode_alloc({{g.id, rest}})}, '|')
else
  return redis.error_reply('ERR tokengate: withdraw mode is amount or grant, not ' .. mode)
end
redis.call('HSET', KEYS[3], op, outcome)
return {'new', outcome}
