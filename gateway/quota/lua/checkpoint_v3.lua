-- checkpoint_v3: record what a live request has delivered so far and renew its lease, so
-- that if this gateway dies the expiry charges what was delivered, and only then.
-- v3: the same steps on lib_v3's reservation record (eleven integers: key_cap added).
-- KEYS: 1 reservations, 2 shard leases, 3 key inflight
-- ARGV: 1 request_id, 2 account_id, 3 key_id, 4 completion tokens so far,
--       5 prompt tokens reported by the upstream (-1: unknown), 6 lease_ms
-- Reply: 0 if the reservation is gone (settled or expired: stop relaying), else the new
--        lease deadline in ms
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local r = decode_record(raw)
if r.key_id ~= ARGV[3] then
  return redis.error_reply('ERR tokengate: request ' .. ARGV[1] .. ' was admitted for another key')
end
local deadline = now_ms() + tonumber(ARGV[6])
local completion, prompt = tonumber(ARGV[4]), tonumber(ARGV[5])
if completion > r.ck_completion then r.ck_completion = completion end
if prompt >= 0 then r.ck_prompt = prompt end
redis.call('HSET', KEYS[1], ARGV[1], encode_record(r))
redis.call('ZADD', KEYS[2], fmt(deadline), ARGV[2] .. '|' .. ARGV[1])
redis.call('ZADD', KEYS[3], fmt(deadline), ARGV[1])
return deadline
