-- Stores a new revision run, indexes it, and opens its first stage — or, when its concurrency
-- group is full (or others already wait), queues it. All or nothing.
-- KEYS: 1 doc, 2 manifests, 3 idx:created, 4 idx:repo, 5 idx:commit, 6 stage stream, 7 events,
--       8 deadlines, 9 group active set, 10 group queue, 11 groups waiting, 12 queue sequence,
--       13 idx:active, 14 group limit
-- ARGV: 1 doc json (admitted), 2 score, 3 id, 4 first stage, 5 attempt, 6 events maxlen,
--       7 request hash, 8 next deadline (ms, '' = none), 9 group ('' = unlimited),
--       10 max concurrent, 11 doc json (queued),
--       12 supersede: '' (no), '*' (every older member), or the comma-separated members the
--          caller was authorized to supersede,
--       13... manifest field/value pairs
-- Returns (codes as strings) {1, older...} created and admitted, {2, older...} created and queued, where older
-- are the group's members at this instant (only with supersede: exactly the runs the caller
-- must cancel, all older than this one); {0} identical request stored before; {-2} a
-- different request holds the id; {-4, member} a member the caller was not authorized for
-- joined the group (nothing written: authorize again).
if redis.call('EXISTS', KEYS[1]) == 1 then
  local stored = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.requestHash'))[1]
  if stored and stored ~= '' and stored ~= ARGV[7] then return {'-2'} end
  return {'0'}
end
local older = {}
local grouped = ARGV[9] ~= ''
if grouped and ARGV[12] ~= '' then
  older = redis.call('SMEMBERS', KEYS[9])
  for _, m in ipairs(redis.call('ZRANGE', KEYS[10], 0, -1)) do table.insert(older, m) end
  if ARGV[12] ~= '*' then
    local allowed = {}
    for m in string.gmatch(ARGV[12], '[^,]+') do allowed[m] = true end
    for _, m in ipairs(older) do
      if not allowed[m] then return {'-4', m} end
    end
  end
end
for i = 13, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[13], ARGV[2], ARGV[3])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[6], '*', 'rr', ARGV[3], 'version', '1')
local reply = {'1'}
if grouped then
  -- The group's limit is its first member's; while the group has members nobody changes it.
  local active, waiting = redis.call('SCARD', KEYS[9]), redis.call('ZCARD', KEYS[10])
  local max = tonumber(ARGV[10])
  if active == 0 and waiting == 0 then
    redis.call('SET', KEYS[14], ARGV[10])
  else
    max = tonumber(redis.call('GET', KEYS[14])) or max
  end
  if active >= max or waiting > 0 then
    redis.call('JSON.SET', KEYS[1], '$', ARGV[11])
    redis.call('ZADD', KEYS[10], redis.call('INCR', KEYS[12]), ARGV[3])
    redis.call('SADD', KEYS[11], ARGV[9])
    reply = {'2'}
  else
    redis.call('SADD', KEYS[9], ARGV[3])
  end
end
for _, m in ipairs(older) do table.insert(reply, m) end
if reply[1] == '2' then return reply end
redis.call('JSON.SET', KEYS[1], '$', ARGV[1])
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[8], ARGV[8], ARGV[3]) end
redis.call('XADD', KEYS[6], '*', 'rr', ARGV[3], 'stage', ARGV[4], 'attempt', ARGV[5])
return reply
