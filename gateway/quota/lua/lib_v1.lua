-- lib_v1: helpers shared by the quota scripts; gateway/quota/scripts.py prepends this file
-- to each script when it registers it, so every script stays one atomic EVALSHA.

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

-- A reservation record (gateway/quota/reservation.py reads the same layout): ten integers,
-- the key id, then the model last so that it may contain '|'.
local REC_INTS = {'reserve', 'prompt', 'granted', 'in_pm', 'out_pm', 'started',
                  'ck_completion', 'ck_prompt', 'tpm_tokens', 'tpm_minute'}

local function decode_record(s)
  local r, pos = {}, 1
  for i = 1, #REC_INTS do
    local j = string.find(s, '|', pos, true)
    r[REC_INTS[i]] = tonumber(string.sub(s, pos, j - 1))
    pos = j + 1
  end
  local j = string.find(s, '|', pos, true)
  r.key_id = string.sub(s, pos, j - 1)
  r.model = string.sub(s, j + 1)
  return r
end

local function encode_record(r)
  local parts = {}
  for i = 1, #REC_INTS do parts[i] = fmt(r[REC_INTS[i]]) end
  parts[#REC_INTS + 1] = r.key_id
  parts[#REC_INTS + 2] = r.model
  return table.concat(parts, '|')
end
