-- admit_v4: a key's checks, rate limits and the credit reservation of one request, atomically.
-- The reservation is drawn from the account's grants that are live (by Redis time) and valid
-- for the model, soonest expiry first, so no grant is ever overdrawn.
-- v4: a key with a credit cap (key record fields credit_limit, credit_period) may reserve
-- no more than its room, cap - spent in the period - held by its requests in flight (its
-- counter, KEYS[8]); the reserve is then held there until settlement. A key without a cap
-- reads two more fields of its record and touches nothing else.
-- KEYS: 1 key record, 2 balance, 3 reservations, 4 rate window, 5 key inflight, 6 shard leases,
--       7 grants, 8 key cap counter
-- ARGV: 1 request_id, 2 account_id, 3 key_id, 4 model, 5 prompt tokens (upper bound),
--       6 requested max_tokens (-1: absent), 7 max_tokens ceiling (0: the request produces
--       no completion, as embeddings; only its prompt is reserved), 8 input_pm, 9 output_pm,
--       10 lease_ms, 11 choices (n x prompts: the grant is a multiple of it, at least one
--       token per choice; v3)
-- Replies (RATE = rpm limit (-1: none), remaining, reset ms, tpm limit (-1: none), remaining,
-- reset ms):
--   {'ok'|'dup', granted max_tokens, reserve, started ms, lease deadline ms, balance epoch,
--    allocation of the reserve over grants, RATE, key_cap 1|0 (the reserve is held on the
--    key's cap counter)}
--   {'auth'} | {'model'} | {'unknown'}
--   {'balance', available for the model, needed, reserved, available for other models only}
--   {'key_limit', credit_limit, credit_period, spent in the period, held in flight, needed}:
--    the key's cap, not the balance, leaves too little for the request
--   {'rate', 'requests'|'tokens'|'concurrency', retry ms, limit, counted, RATE}
local WIN = 60000
local rid, account, key_id, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local prompt, requested, ceiling = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local in_pm, out_pm, lease_ms = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local choices = tonumber(ARGV[11]) or 1
local now = now_ms()

local kr = redis.call('HMGET', KEYS[1], 'disabled', 'models', 'rpm', 'tpm', 'max_concurrency',
                      'credit_limit', 'credit_period')
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not kr[1] then
  -- Neither the key nor the balance: Redis lost data; refuse as unknown until rebuilt.
  if not epoch then return {'unknown'} end
  return {'auth'}
end
if kr[1] == '1' then return {'auth'} end
local allowed = kr[2] or ''
if allowed ~= '' and (string.find(model, ',', 1, true)
    or not string.find(',' .. allowed .. ',', ',' .. model .. ',', 1, true)) then
  return {'model'}
end
local rpm, tpm, maxc = tonumber(kr[3]), tonumber(kr[4]), tonumber(kr[5])

-- Sliding window: this minute's count plus last minute's, weighted by the part of last
-- minute still inside the window. Scaled by WIN to stay in integers.
local minute = math.floor(now / WIN)
local el = now - minute * WIN
local rc, rp, tc, tp = 0, 0, 0, 0
if rpm or tpm then
  local s = redis.call('HMGET', KEYS[4], 'm', 'rc', 'rp', 'tc', 'tp')
  local m = tonumber(s[1])
  if m == minute then
    rc, rp = tonumber(s[2]) or 0, tonumber(s[3]) or 0
    tc, tp = tonumber(s[4]) or 0, tonumber(s[5]) or 0
  elseif m == minute - 1 then
    rp, tp = tonumber(s[2]) or 0, tonumber(s[4]) or 0
  end
end
local function used(cur, prev) return prev * (WIN - el) + cur * WIN end
local function fits(limit, need, cur, prev) return used(cur, prev) + need * WIN <= limit * WIN end
local function reset_ms(cur, prev)
  if cur > 0 then return 2 * WIN - el end
  if prev > 0 then return WIN - el end
  return 0
end
local function room(limit, cur, prev) return idiv(limit * WIN - used(cur, prev), WIN) end
local function rate_info()
  local r = {-1, 0, 0, -1, 0, 0}
  if rpm then r[1], r[2], r[3] = rpm, math.max(0, room(rpm, rc, rp)), reset_ms(rc, rp) end
  if tpm then r[4], r[5], r[6] = tpm, math.max(0, room(tpm, tc, tp)), reset_ms(tc, tp) end
  return r
end
-- ms until `need` more fits under `limit` if nothing else arrives
local function wait_ms(limit, need, cur, prev)
  if need > limit then return WIN end
  if cur + need <= limit then
    return WIN - math.floor((limit - need - cur) * WIN / prev) - el
  end
  return 2 * WIN - el - math.floor((limit - need) * WIN / cur)
end
local function refuse(which, retry, limit, need)
  return {'rate', which, retry, limit, need, unpack(rate_info())}
end

local existing = redis.call('HGET', KEYS[3], rid)
if existing then
  local r = decode_record(existing)
  local deadline = tonumber(redis.call('ZSCORE', KEYS[6], account .. '|' .. rid)) or now
  local reply = {'dup', r.granted, r.reserve, r.started, deadline, epoch or '', r.alloc,
                 unpack(rate_info())}
  reply[#reply + 1] = r.key_cap
  return reply
end

if not epoch then return {'unknown'} end
local grants, by_id = load_grants(KEYS[7])
local usable, available, reserved, elsewhere = {}, 0, 0, 0
for i = 1, #grants do
  local g = grants[i]
  local free = g.credits - g.reserved - g.spent
  reserved = reserved + g.reserved
  if free > 0 and grant_live(g, now) then
    if grant_allows(g, model) then
      usable[#usable + 1] = {g.id, free}
      available = available + free
    else
      elsewhere = elsewhere + free
    end
  end
end

-- What this request may draw on: the balance, or less when the key's cap leaves less room.
local payable, capped_by_key = available, false
local climit, ckind = tonumber(kr[6]), kr[7]
local period, cspent, cheld
if climit then
  if ckind ~= 'day' and ckind ~= 'month' then ckind = 'total' end
  period = cap_period(ckind, now)
  local had
  had, cspent, cheld = read_spend(KEYS[8])
  cspent = spent_in(period, had, cspent)
  local key_room = climit - cspent - cheld
  if key_room < payable then payable, capped_by_key = key_room, true end
end

local wish = ceiling
if requested >= 0 and requested < ceiling then wish = requested end
local left = payable * 1000 - prompt * in_pm  -- per-mille credits left after the prompt
local afford = wish
if out_pm > 0 then afford = idiv(left, out_pm) elseif left < 0 then afford = -1 end

if rpm and not fits(rpm, 1, rc, rp) then
  return refuse('requests', wait_ms(rpm, 1, rc, rp), rpm, 1)
end
if tpm then
  if requested < 0 then
    -- no max_tokens asked for: grant what the token window still allows
    local cap = room(tpm, tc, tp) - prompt
    if cap < wish then wish = cap end
  end
  local need = prompt + math.max(ceiling > 0 and choices or 0, math.min(wish, afford))
  if not fits(tpm, need, tc, tp) then
    return refuse('tokens', wait_ms(tpm, need, tc, tp), tpm, need)
  end
end
if maxc then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. fmt(now))
  local n = redis.call('ZCARD', KEYS[5])
  if n >= maxc then return refuse('concurrency', 1000, maxc, n + 1) end
end

local granted = math.min(wish, afford)
if ceiling == 0 and left >= 0 then
  granted = 0
else
  granted = granted - granted % choices  -- every choice gets the same max_tokens
  if granted < choices then
    local needed = cost(prompt, choices, in_pm, out_pm)
    if capped_by_key then
      return {'key_limit', climit, ckind, cspent, cheld, needed}
    end
    return {'balance', available, needed, reserved, elsewhere}
  end
end
local reserve = cost(prompt, granted, in_pm, out_pm)
if climit then write_spend(KEYS[8], period, cspent, cheld + reserve) end
local alloc = take(usable, reserve)
for i = 1, #alloc do
  if alloc[i][2] > 0 then
    local g = by_id[alloc[i][1]]
    g.reserved = g.reserved + alloc[i][2]
    redis.call('HSET', KEYS[7], g.id, encode_grant(g))
  end
end
alloc = encode_alloc(alloc)

local tpm_tokens = 0
if tpm then tpm_tokens = prompt + granted end
if rpm or tpm then
  rc, tc = rc + 1, tc + tpm_tokens
  redis.call('HSET', KEYS[4], 'm', fmt(minute), 'rc', fmt(rc), 'rp', fmt(rp),
             'tc', fmt(tc), 'tp', fmt(tp))
  redis.call('PEXPIRE', KEYS[4], 2 * WIN)
end
local deadline = now + lease_ms
redis.call('HSET', KEYS[3], rid, encode_record({
  reserve = reserve, prompt = prompt, granted = granted, in_pm = in_pm, out_pm = out_pm,
  started = now, ck_completion = 0, ck_prompt = -1, tpm_tokens = tpm_tokens,
  tpm_minute = minute, key_cap = climit and 1 or 0, key_id = key_id, alloc = alloc,
  model = model}))
redis.call('ZADD', KEYS[6], fmt(deadline), account .. '|' .. rid)
redis.call('ZADD', KEYS[5], fmt(deadline), rid)
local reply = {'ok', granted, reserve, now, deadline, epoch, alloc, unpack(rate_info())}
reply[#reply + 1] = climit and 1 or 0
return reply
