-- Record and advance: compare-and-set of one revision run document with every effect of the
-- change — stage messages, the watch event, the deadline index and its concurrency slot.
-- KEYS: doc, stage stream, events, deadlines, group active set, group queue, idx:active,
--       group limit
-- ARGV: expected version, id, attempt, events maxlen, new version, expected rev,
--       next deadline (ms, '' = none: the entry is removed),
--       slot op ('' | 'release' | 'take:<max>' (a queued run is admitted) | 'grab:<max>' (a
--       retry runs again); <max> is the run's own limit, used only where the group has none
--       stored (a group that had no member takes it)), active-index score ('' = finished: removed from the index),
--       number of stage messages, the messages as (op, stage) pairs
--       ('open' or 'cancel'), then writes as (op, path, json) triples
--       (op 'S' = JSON.SET, 'D' = JSON.DEL; json empty for D).
-- Returns 1 stored, 0 the document changed meanwhile, -1 no document, -3 no free slot.
-- The random rev decides; the version is compared too for documents written before revs.
local cur = redis.call('JSON.GET', KEYS[1], '$.version', '$.rev')
if not cur then return -1 end
cur = cjson.decode(cur)
local v = cur['$.version'][1]
local rev = cur['$.rev'][1] or ''
if v ~= tonumber(ARGV[1]) or rev ~= ARGV[6] then return 0 end
local slot = ARGV[8]
if slot == 'release' then
  redis.call('SREM', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  if redis.call('SCARD', KEYS[5]) == 0 and redis.call('ZCARD', KEYS[6]) == 0 then
    redis.call('DEL', KEYS[8])
  end
elseif slot ~= '' then
  local kind, own = string.match(slot, '^(%a+):(%d+)$')
  local active = redis.call('SCARD', KEYS[5])
  local max = tonumber(redis.call('GET', KEYS[8])) or tonumber(own)
  if active == 0 and redis.call('ZCARD', KEYS[6]) == 0 then
    max = tonumber(own)
    redis.call('SET', KEYS[8], own)
  end
  if active >= max then return -3 end
  if kind == 'take' and not redis.call('ZSCORE', KEYS[6], ARGV[2]) then return -3 end
  redis.call('SADD', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
end
if ARGV[7] == '' then
  redis.call('ZREM', KEYS[4], ARGV[2])
else
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[2])
end
if ARGV[9] == '' then
  redis.call('ZREM', KEYS[7], ARGV[2])
else
  redis.call('ZADD', KEYS[7], ARGV[9], ARGV[2])
end
local messages = tonumber(ARGV[10])
for i = 11, 10 + 2 * messages, 2 do
  redis.call('XADD', KEYS[2], '*', 'rr', ARGV[2], 'stage', ARGV[i + 1], 'attempt', ARGV[3],
    'op', ARGV[i])
end
for i = 11 + 2 * messages, #ARGV, 3 do
  if ARGV[i] == 'S' then
    redis.call('JSON.SET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('JSON.DEL', KEYS[1], ARGV[i + 1])
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'rr', ARGV[2], 'version', ARGV[5])
return 1
