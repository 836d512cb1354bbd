-- settle_v4: charge a request's tokens, release its reservation and append its usage event,
-- atomically. Idempotent by request id.
-- The full cost of the tokens is due (invariant 2: billed = what the upstream reports). The
-- part up to the reserve is charged to the grants reserved from; the excess, when the
-- admission's estimate fell short, to the account's available credits (grants live by Redis
-- time and valid for the model, in drawing order, never below zero). What those cannot pay
-- at this instant is recorded as 'uncollected' (v2 charged min(cost, reserve) and dropped
-- the rest silently).
-- v4: a request admitted under its key's credit cap (the record's key_cap) releases what it
-- held on the key's counter and adds its charge to the key's spending in the period of the
-- settlement (by Redis time; a new period starts at 0), and its excess is also limited by
-- the key's room (cap - spent - held - this charge): beyond it the excess is uncollected,
-- so a capped key never spends more than its cap. Other requests touch no cap key.
-- KEYS: 1 balance, 2 reservations, 3 rate window, 4 key inflight, 5 shard leases,
--       6 usage stream, 7 grants, 8 key record, 9 key cap counter
-- ARGV: 1 request_id, 2 account_id, 3 key_id, 4 mode 'settle'|'expire', 5 prompt tokens,
--       6 completion tokens, 7 cached tokens, 8 status, 9 counted_by, 10 stream '1'|'0',
--       11 cluster, 12 endpoint   ('expire' ignores 5-12: the reservation decides)
--       13 only from the gateway that admitted the request ('' otherwise): what it remembers
--          of the admission,
--          'epoch|reserve|input_pm|output_pm|started ms|key_cap 1|0|allocation|model'
-- Replies: {'dup'}: no reservation (already settled or expired), nothing changed
--          {'live', deadline ms}: 'expire', but a live gateway renewed the lease; nothing changed
--          {'ok', stream entry id, field, value, ...}: the usage event as appended
--
-- A reservation that is gone although the balance epoch differs from the admission's (or the
-- balance is gone) was lost with Redis data, not settled: the request was served, so it is
-- charged from what its gateway remembers (13) and its event appended; the grants are
-- charged only if a rebuilt balance exists (a rebuild never saw that reservation), and the
-- excess only from such a balance's available credits.
local rid, account, key_id, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local raw = redis.call('HGET', KEYS[2], rid)
local lost = false
local r
if raw then
  r = decode_record(raw)
  if r.key_id ~= key_id then
    return redis.error_reply('ERR tokengate: request ' .. rid .. ' was admitted for another key')
  end
elseif mode == 'settle' and ARGV[13] ~= '' then
  local e, rs, i, o, st, kc, al, m = string.match(ARGV[13],
    '^([^|]*)|(%d+)|(%d+)|(%d+)|(%d+)|([01])|([^|]*)|(.*)$')
  if epoch == e then return {'dup'} end  -- same life of the balance: it was settled
  lost = true
  r = {reserve = tonumber(rs), in_pm = tonumber(i), out_pm = tonumber(o), started = tonumber(st),
       key_cap = tonumber(kc), alloc = al, model = m, tpm_tokens = 0, tpm_minute = 0}
else
  return {'dup'}
end
local now = now_ms()
local member = account .. '|' .. rid
local prompt, completion, cached = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local status, counted_by, stream = ARGV[8], ARGV[9], ARGV[10]
local cluster, endpoint = ARGV[11], ARGV[12]
if mode == 'expire' then
  local deadline = tonumber(redis.call('ZSCORE', KEYS[5], member))
  if deadline and deadline >= now then return {'live', deadline} end
  -- The gateway died. Charge what a checkpoint proves was delivered, with the upstream's
  -- prompt count when it gave one, else the admission estimate; no checkpoint: nothing.
  completion, cached = r.ck_completion, 0
  if r.ck_prompt >= 0 then
    prompt = r.ck_prompt
  elseif r.ck_completion > 0 then
    prompt = r.prompt
  else
    prompt = 0
  end
  status, counted_by, stream, cluster, endpoint = 'expired', 'gateway', '0', '', ''
end
local due = cost(prompt, completion, r.in_pm, r.out_pm)
local reserved = decode_alloc(r.alloc)
local charged = take(reserved, math.min(due, r.reserve))
local charge = 0
for i = 1, #charged do charge = charge + charged[i][2] end
local paid = charged  -- the charge by grant, as the event lists it

-- The key's cap: what it held is released (a lost reservation's hold was lost with it), and
-- the excess may take no more than the room the cap leaves. A key revoked meanwhile has no
-- record and no counter any more: nothing to keep.
local climit, period, cspent, cheld
local key_live = false
if r.key_cap == 1 then
  local k = redis.call('HMGET', KEYS[8], 'disabled', 'credit_limit', 'credit_period')
  key_live = k[1] ~= false
  local had
  had, cspent, cheld = read_spend(KEYS[9])
  if not lost then cheld = cheld - r.reserve end
  climit = tonumber(k[2])
  if climit then period = cap_period(k[3], now) else period = had end  -- cap removed: as it was
  cspent = spent_in(period, had, cspent)
end

-- A missing balance (Redis lost data) stays missing: writing grants would invent one.
if epoch then
  local grants, by_id = load_grants(KEYS[7])
  charge_grants(KEYS[7], by_id, reserved, charged, not lost)
  -- The excess over the reserve, from what is free now that this reservation is released.
  local excess, extra = due - charge, nil
  if climit then excess = math.min(excess, climit - cspent - math.max(0, cheld) - charge) end
  for i = 1, #grants do
    if excess <= 0 then break end
    local g = grants[i]
    local free = g.credits - g.reserved - g.spent
    if free > 0 and grant_live(g, now) and grant_allows(g, r.model) then
      local n = math.min(free, excess)
      g.spent = g.spent + n
      redis.call('HSET', KEYS[7], g.id, encode_grant(g))
      extra = extra or {}
      extra[g.id] = n
      excess = excess - n
      charge = charge + n
    end
  end
  if extra then
    -- Both parts merged per grant, in drawing order; a reserved grant the hash lacks comes
    -- last (charged as the reservation said: the ledger may still hold it).
    local part, merged = {}, {}
    for i = 1, #charged do part[charged[i][1]] = (part[charged[i][1]] or 0) + charged[i][2] end
    for i = 1, #grants do
      local id = grants[i].id
      local n = (part[id] or 0) + (extra[id] or 0)
      if n > 0 then merged[#merged + 1] = {id, n} end
    end
    for i = 1, #charged do
      if not by_id[charged[i][1]] then merged[#merged + 1] = charged[i] end
    end
    paid = merged
  end
end
local uncollected = due - charge
if key_live then write_spend(KEYS[9], period, cspent + charge, cheld) end
redis.call('HDEL', KEYS[2], rid)
redis.call('ZREM', KEYS[5], member)
redis.call('ZREM', KEYS[4], rid)

-- Give back the TPM tokens counted at admission but not used, if their minute is tracked.
local give = r.tpm_tokens - prompt - completion
if give > 0 then
  local s = redis.call('HMGET', KEYS[3], 'm', 'tc', 'tp')
  local m = tonumber(s[1])
  if m == r.tpm_minute then
    redis.call('HSET', KEYS[3], 'tc', fmt(math.max(0, (tonumber(s[2]) or 0) - give)))
  elseif m == r.tpm_minute + 1 then
    redis.call('HSET', KEYS[3], 'tp', fmt(math.max(0, (tonumber(s[3]) or 0) - give)))
  end
end

-- gateway/usage.py reads these fields; 'grants' says which grants paid the charge (its sum),
-- 'uncollected' what was due beyond it, and 'epoch' which balance it was charged to
-- ('' = none: the balance was missing).
local event = {
  'request_id', rid, 'account_id', account, 'key_id', key_id, 'model', r.model,
  'cluster', cluster, 'endpoint', endpoint, 'prompt_tokens', fmt(prompt),
  'completion_tokens', fmt(completion), 'cached_tokens', fmt(cached), 'charge', fmt(charge),
  'uncollected', fmt(uncollected),
  'status', status, 'counted_by', counted_by, 'stream', stream,
  'started_at_ms', fmt(r.started), 'finished_at_ms', fmt(now),
  'grants', encode_alloc(paid), 'epoch', epoch or ''}
local id = redis.call('XADD', KEYS[6], '*', unpack(event))
return {'ok', id, unpack(event)}
