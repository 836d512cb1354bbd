-- rebuild_v2: compare an account's grants in Redis with what the ledger says, and (mode
-- 'apply') replace them, atomically with respect to admission, settlement and withdrawals.
-- KEYS: 1 balance, 2 grants, 3 reservations, 4 usage stream, 5 withdrawals (v2)
-- ARGV: 1 'check'|'apply', 2 account id, 3 epoch for a balance that is missing,
--       4 id of the last stream entry the caller counted ('' = none), 5 n grants, then per
--       grant: id, credits, spent, expires ms, models. `credits` is what the grant holds in
--       the ledger (bought less withdrawn), `expires` the ledger's (a closed grant's: the
--       close), `spent` the ledger's charges plus those of the stream entries up to ARGV[4]
--       that the ledger does not have yet. Then m, and the m operation ids of KEYS[5] that
--       the caller's ledger snapshot holds (v2).
-- Reply: {epoch, drift...}: one text per difference found ('balance' = it was missing).
--
-- What the caller could not see is added here: the charges of entries appended after
-- ARGV[4] (settled meanwhile, not yet in the ledger), the reservations in flight, and the
-- withdrawals Redis made that the snapshot lacks (withdraw_v1.lua; billing posts them after
-- Redis), so a rebuild neither loses nor double counts work in progress, nor undoes a
-- withdrawal.
local mode, account = ARGV[1], ARGV[2]
local want, order = {}, {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local b = 6 + i * 5
  local g = {id = ARGV[b], credits = tonumber(ARGV[b + 1]), reserved = 0,
             spent = tonumber(ARGV[b + 2]), expires = tonumber(ARGV[b + 3]), models = ARGV[b + 4]}
  want[g.id] = g
  order[#order + 1] = g.id
end

local posted, base = {}, 6 + tonumber(ARGV[5]) * 5
for i = 1, tonumber(ARGV[base] or '0') do posted[ARGV[base + i]] = true end
local ops = redis.call('HGETALL', KEYS[5])
for j = 1, #ops, 2 do
  local status, _, _, closed, close, alloc =
    string.match(ops[j + 1], '^(%a+)|(%d+)|(%d+)|([^|]*)|(%d+)|(.*)$')
  if status == 'applied' and not posted[ops[j]] then
    for _, part in ipairs(decode_alloc(alloc)) do
      local g = want[part[1]]
      if g then g.credits = g.credits - part[2] end
    end
    local g = want[closed]
    close = tonumber(close)
    if g and (g.expires == 0 or close < g.expires) then g.expires = close end
  end
end

local function add(alloc, field)
  for _, part in ipairs(decode_alloc(alloc)) do
    local g = want[part[1]]
    if g then g[field] = g[field] + part[2] end
  end
end

local start = '-'
if ARGV[4] ~= '' then start = '(' .. ARGV[4] end
local seen = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[4], start, '+')) do
  local f, e = entry[2], {}
  for j = 1, #f, 2 do e[f[j]] = f[j + 1] end
  if e.account_id == account and e.request_id and not seen[e.request_id] then
    seen[e.request_id] = true
    add(e.grants, 'spent')
  end
end
for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
  add(decode_record(raw).alloc, 'reserved')
end

local drift = {}
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then drift[#drift + 1] = 'balance' end
local have, had = redis.call('HGETALL', KEYS[2]), {}
for j = 1, #have, 2 do
  local id, text = have[j], have[j + 1]
  had[id] = true
  if not want[id] then
    drift[#drift + 1] = id .. ' ' .. text .. ' -> none'
  elseif encode_grant(want[id]) ~= text then
    drift[#drift + 1] = id .. ' ' .. text .. ' -> ' .. encode_grant(want[id])
  end
end
for _, id in ipairs(order) do
  if not had[id] then drift[#drift + 1] = id .. ' none -> ' .. encode_grant(want[id]) end
end
if mode == 'apply' and #drift > 0 then
  redis.call('DEL', KEYS[2])
  for _, id in ipairs(order) do redis.call('HSET', KEYS[2], id, encode_grant(want[id])) end
  if not epoch then
    epoch = ARGV[3]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
  end
end
return {epoch or '', unpack(drift)}
