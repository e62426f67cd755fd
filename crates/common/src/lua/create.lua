-- Stores a new revision run, indexes it, and opens its first stage — or, when its concurrency
-- group is full (or others already wait), queues it. All or nothing.
-- KEYS: doc, manifests, idx:created, idx:repo, idx:commit, stage stream, events, deadlines,
--       group active set, group queue, groups waiting, queue sequence, idx:active
-- ARGV: doc json (admitted), score, id, first stage, attempt, events maxlen, request hash,
--       next deadline (ms, '' = none), group ('' = unlimited), max concurrent,
--       doc json (queued), manifest field/value pairs...
-- Returns 1 created and admitted, 2 created and queued, 0 identical request stored before,
-- -2 a different request holds the id.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local stored = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.requestHash'))[1]
  if stored and stored ~= '' and stored ~= ARGV[7] then return -2 end
  return 0
end
for i = 12, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[13], ARGV[2], ARGV[3])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[6], '*', 'rr', ARGV[3], 'version', '1')
if ARGV[9] ~= '' then
  local max = tonumber(ARGV[10])
  if redis.call('SCARD', KEYS[9]) >= max or redis.call('ZCARD', KEYS[10]) > 0 then
    redis.call('JSON.SET', KEYS[1], '$', ARGV[11])
    redis.call('ZADD', KEYS[10], redis.call('INCR', KEYS[12]), ARGV[3])
    redis.call('SADD', KEYS[11], ARGV[9])
    return 2
  end
  redis.call('SADD', KEYS[9], ARGV[3])
end
redis.call('JSON.SET', KEYS[1], '$', ARGV[1])
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[8], ARGV[8], ARGV[3]) end
redis.call('XADD', KEYS[6], '*', 'rr', ARGV[3], 'stage', ARGV[4], 'attempt', ARGV[5])
return 1
