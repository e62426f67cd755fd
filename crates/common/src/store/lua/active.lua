-- Builds the active index from documents written before it existed: each listed document that
-- is queued, pending or running is added, read and added in one step so no document can finish
-- in between and be left behind in the index.
-- KEYS: idx:active, then one document key per id
-- ARGV: (score, id) pairs, one per document key
for i = 2, #KEYS do
  local raw = redis.call('JSON.GET', KEYS[i], '$.phase')
  if raw then
    local phase = cjson.decode(raw)[1]
    if phase == 'Queued' or phase == 'Pending' or phase == 'Running' then
      redis.call('ZADD', KEYS[1], ARGV[2 * i - 3], ARGV[2 * i - 2])
    end
  end
end
return 1
