-- lib_v3: helpers shared by the quota scripts; gateway/quota/scripts.py prepends this file
-- to each script when it registers it, so every script stays one atomic EVALSHA.
-- v3: the reservation record gains an eleventh integer, key_cap (its reserve is held on the
-- key's credit cap counter), and the credit cap helpers (periods by Redis time, the counter).

-- Redis TIME in ms: one clock for every gateway process, never the caller's.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as decimal text (Lua numbers are doubles and tostring(1e15) is '1e+15').
local function fmt(n)
  return string.format('%d', n)
end

-- Floor division of integers, exact (a double quotient may round across an integer).
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

-- Credits: ceil((p*in_pm + c*out_pm) / 1000), as gateway/quota/pricing.py:cost. Exact
-- while the products stay below 2^53.
local function cost(p, c, in_pm, out_pm)
  local units = p * in_pm + c * out_pm
  if units <= 0 then return 0 end
  return idiv(units + 999, 1000)
end

-- An allocation over grants, 'gid:n,gid:n' (grant ids hold no ':', ',' or '|'), in the
-- order the credits are drawn: the grant that expires first comes first.
local function decode_alloc(s)
  local list = {}
  for gid, n in string.gmatch(s or '', '([^:,]+):(%d+)') do
    list[#list + 1] = {gid, tonumber(n)}
  end
  return list
end

local function encode_alloc(list)
  local parts = {}
  for i = 1, #list do
    if list[i][2] > 0 then parts[#parts + 1] = list[i][1] .. ':' .. fmt(list[i][2]) end
  end
  return table.concat(parts, ',')
end

-- Take `amount` from an allocation in its order: the part each grant gives.
local function take(list, amount)
  local out = {}
  for i = 1, #list do
    local n = math.min(list[i][2], amount)
    out[#out + 1] = {list[i][1], n}
    amount = amount - n
  end
  return out
end

-- A reservation record (gateway/quota/reservation.py reads the same layout): eleven
-- integers, the key id, the allocation of the reserve over grants, then the model last so
-- that it may contain '|'. key_cap is 1 when the reserve is held on the key's credit cap
-- counter (the key had a cap at admission), else 0.
local REC_INTS = {'reserve', 'prompt', 'granted', 'in_pm', 'out_pm', 'started',
                  'ck_completion', 'ck_prompt', 'tpm_tokens', 'tpm_minute', 'key_cap'}

local function decode_record(s)
  local r, pos = {}, 1
  for i = 1, #REC_INTS do
    local j = string.find(s, '|', pos, true)
    r[REC_INTS[i]] = tonumber(string.sub(s, pos, j - 1))
    pos = j + 1
  end
  local j = string.find(s, '|', pos, true)
  r.key_id = string.sub(s, pos, j - 1)
  local k = string.find(s, '|', j + 1, true)
  r.alloc = string.sub(s, j + 1, k - 1)
  r.model = string.sub(s, k + 1)
  return r
end

local function encode_record(r)
  local parts = {}
  for i = 1, #REC_INTS do parts[i] = fmt(r[REC_INTS[i]]) end
  parts[#REC_INTS + 1] = r.key_id
  parts[#REC_INTS + 2] = r.alloc
  parts[#REC_INTS + 3] = r.model
  return table.concat(parts, '|')
end

-- A grant of credits (gateway/quota/grants.py reads the same layout):
-- 'credits|reserved|spent|expires_ms|models'; expires 0 = never, models '' = every model.
-- What a grant holds at any instant: credits = available + reserved + spent + expired,
-- where the unreserved, unspent rest is available before its expiry and expired after.
local function decode_grant(id, s)
  local c, r, sp, e, m = string.match(s, '^(%d+)|(%d+)|(%d+)|(%d+)|(.*)$')
  return {id = id, credits = tonumber(c), reserved = tonumber(r), spent = tonumber(sp),
          expires = tonumber(e), models = m}
end

local function encode_grant(g)
  return table.concat({fmt(g.credits), fmt(g.reserved), fmt(g.spent), fmt(g.expires),
                       g.models}, '|')
end

local function grant_live(g, now) return g.expires == 0 or now < g.expires end

local function grant_allows(g, model)
  return g.models == '' or
    string.find(',' .. g.models .. ',', ',' .. model .. ',', 1, true) ~= nil
end

-- The grants of an account by id, and in drawing order: soonest expiry first, never-expiring
-- ones last, ties by id (so every script and billing agree on the order).
local function load_grants(key)
  local flat = redis.call('HGETALL', key)
  local list, by_id = {}, {}
  for i = 1, #flat, 2 do
    local g = decode_grant(flat[i], flat[i + 1])
    list[#list + 1] = g
    by_id[g.id] = g
  end
  table.sort(list, function(a, b)
    local ea = a.expires == 0 and math.huge or a.expires
    local eb = b.expires == 0 and math.huge or b.expires
    if ea ~= eb then return ea < eb end
    return a.id < b.id
  end)
  return list, by_id
end

-- Charge an allocation against grants: the amount charged is spent and, when `release`,
-- each grant's part of the reservation is released. Grants the hash lacks are skipped.
local function charge_grants(key, by_id, reserved, charged, release)
  for i = 1, #reserved do
    local g = by_id[reserved[i][1]]
    if g then
      if release then g.reserved = math.max(0, g.reserved - reserved[i][2]) end
      g.spent = g.spent + charged[i][2]
      redis.call('HSET', key, g.id, encode_grant(g))
    end
  end
end

-- Credit caps. A key may spend at most `credit_limit` credits per `credit_period` ('day',
-- 'month': UTC calendar by Redis time; 'total': ever). The period's id, as
-- gateway/quota/periods.py computes it too: 'd<days since 1970-01-01>',
-- 'm<year * 12 + month - 1>', or 't'. An unknown period counts as 'total' (never resets).
local DAY_MS = 86400000

-- (year, month) of a day count since 1970-01-01: Howard Hinnant's civil_from_days, in
-- floor divisions (exact for any day of the proleptic Gregorian calendar).
local function civil_month(days)
  local z = days + 719468
  local era = idiv(z, 146097)
  local doe = z - era * 146097
  local yoe = idiv(doe - idiv(doe, 1460) + idiv(doe, 36524) - idiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + idiv(yoe, 4) - idiv(yoe, 100))
  local mp = idiv(5 * doy + 2, 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function cap_period(kind, now)
  if kind == 'day' then return 'd' .. fmt(idiv(now, DAY_MS)) end
  if kind == 'month' then
    local y, m = civil_month(idiv(now, DAY_MS))
    return 'm' .. fmt(y * 12 + m - 1)
  end
  return 't'
end

-- A key's cap counter, HASH period / spent / held: what the key spent in `period` and what
-- its reservations in flight hold against the cap. Spending of another period counts 0 (a
-- new period starts at 0); what is held is held whatever the period.
local function read_spend(key)
  local c = redis.call('HMGET', key, 'period', 'spent', 'held')
  return c[1] or '', tonumber(c[2]) or 0, tonumber(c[3]) or 0
end

local function spent_in(period, had_period, spent)
  if period == had_period then return spent end
  return 0
end

local function write_spend(key, period, spent, held)
  redis.call('HSET', key, 'period', period, 'spent', fmt(spent), 'held', fmt(math.max(0, held)))
end
