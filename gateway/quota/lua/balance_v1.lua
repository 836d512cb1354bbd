-- balance_v1: an account's credits by Redis time, per grant and in total, read atomically.
-- KEYS: 1 balance, 2 grants
-- Reply: nil when the balance is unknown, else {epoch, now ms, n, then per grant, in drawing
--   order: id, credits, available, reserved, spent, expired, expires ms, models}
-- For every grant credits = available + reserved + spent + expired at every instant: the
-- unreserved, unspent rest is available while the grant lives and expired after.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return false end
local now = now_ms()
local grants = load_grants(KEYS[2])
local out = {epoch, now, #grants}
for i = 1, #grants do
  local g = grants[i]
  local rest = g.credits - g.reserved - g.spent
  local available, expired = rest, 0
  if not grant_live(g, now) then available, expired = 0, rest end
  for _, v in ipairs({g.id, g.credits, available, g.reserved, g.spent, expired, g.expires,
                      g.models}) do
    out[#out + 1] = v
  end
end
return out
