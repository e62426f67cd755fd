-- Removes a finished revision run with every index entry naming it: the housekeeping's last
-- step, after its PipelineRuns were deleted. A run that is not finished (a retry started it
-- again meanwhile) is left alone.
-- KEYS: doc, manifests, idx:created, idx:repo, idx:commit, deadlines, idx:active
-- ARGV: id
-- Returns 1 removed, 0 not finished, -1 no document (only stale index entries were removed).
local raw = redis.call('JSON.GET', KEYS[1], '$.phase')
if raw then
  local phase = cjson.decode(raw)[1]
  if phase == 'Queued' or phase == 'Pending' or phase == 'Running' then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2])
for i = 3, 7 do redis.call('ZREM', KEYS[i], ARGV[1]) end
if raw then return 1 end
return -1
