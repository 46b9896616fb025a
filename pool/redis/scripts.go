package redis

import goredis "github.com/redis/go-redis/v9"

// Every operation is one Lua script: it runs atomically in Redis, so the
// agents sharing a pool never see it half done, and it costs one round trip.
//
// Each script gets the target's keys in this order (see keys):
//
//	KEYS[1] meta   hash    seeded=1, seq=<cooling tie-break counter>
//	KEYS[2] ip     hash    addr -> state (below)
//	KEYS[3] ready  list    available IPs, the one free longest first
//	KEYS[4] cool   zset    cooling IPs, score = readyAt (Unix ms)
//	KEYS[5] lease  zset    in-use IPs, score = lease deadline (Unix ms)
//	KEYS[6] quar   zset    quarantined IPs, score = release time (Unix ms)
//	KEYS[7] fail   hash    addr -> consecutive failures
//
// A state is one letter, then data:
//
//	a                    available (in ready)
//	c<seq>               cooling (in cool); seq orders IPs with equal readyAt
//	q                    quarantined (in quar)
//	u<token>|<since ms>  in use (in lease) by the holder of token; an empty
//	                     token is unclaimed (see seedScript)
//	U<token>|<since ms>  in use, and no longer configured: leaves when returned
//
// An in-use state may end in |<until ms>: quarantined (Hold) while in use,
// it goes into quarantine until then when returned, or when its lease runs
// out, unless that time has passed.
//
// Times are passed in (ARGV, Unix ms of the caller's clock) and never read
// from Redis, so pool timing follows pool.Clock. Scripts return numbers
// and strings only: booleans and nils map to different types in RESP2 and
// RESP3.

// errUnknownTarget is the error reply for a target never seeded (or lost
// with a Redis restart).
const errUnknownTarget = "PH_UNKNOWN_TARGET"

const preamble = `
local function known()
  return redis.call('EXISTS', KEYS[1]) == 1
end

-- unknown fails the script if the target was never seeded (or Redis lost
-- it). Scripts call it only when they found nothing: a pool that has an
-- IP is known.
local function unknown()
  if not known() then
    error({err = '` + errUnknownTarget + `'})
  end
end

-- holder returns the state letter and token of an in-use state, or nil.
local function holder(st)
  if not st then return nil end
  local k = string.sub(st, 1, 1)
  if k ~= 'u' and k ~= 'U' then return nil end
  local bar = string.find(st, '|', 2, true)
  return k, string.sub(st, 2, bar - 1)
end

-- mark returns the pending quarantine time (ms) of an in-use state, or nil,
-- and the state without it.
local function mark(st)
  local bar = string.find(st, '|', 2, true)
  local bar2 = bar and string.find(st, '|', bar + 1, true)
  if not bar2 then return nil, st end
  return tonumber(string.sub(st, bar2 + 1)), string.sub(st, 1, bar2 - 1)
end

-- quarantine puts addr in quar until the given time (ms).
local function quarantine(a, untilMs)
  redis.call('HSET', KEYS[2], a, 'q')
  redis.call('ZADD', KEYS[6], untilMs, a)
end

-- forget drops addr from the pool for good.
local function forget(a)
  redis.call('HDEL', KEYS[2], a)
  redis.call('HDEL', KEYS[7], a)
end

-- promote moves IPs whose cooldown ended, and in-use IPs whose lease ran
-- out (their holder died), to the end of ready: in readyAt order, ties
-- in the order they started cooling.
local function promote(now)
  local due = {}
  local c = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'WITHSCORES')
  if #c > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    for i = 1, #c, 2 do
      local st = redis.call('HGET', KEYS[2], c[i])
      due[#due + 1] = {c[i], tonumber(c[i + 1]), tonumber(string.sub(st or '', 2)) or 0}
    end
  end
  local l = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'WITHSCORES')
  if #l > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    for i = 1, #l, 2 do
      local st = redis.call('HGET', KEYS[2], l[i])
      local untilMs = st and mark(st)
      if holder(st) == 'U' then
        forget(l[i])
      elseif untilMs and untilMs > tonumber(now) then
        quarantine(l[i], untilMs)
      else
        due[#due + 1] = {l[i], tonumber(l[i + 1]), 0}
      end
    end
  end
  if #due > 1 then
    table.sort(due, function(x, y)
      if x[2] ~= y[2] then return x[2] < y[2] end
      return x[3] < y[3]
    end)
  end
  for _, e in ipairs(due) do
    redis.call('RPUSH', KEYS[3], e[1])
    redis.call('HSET', KEYS[2], e[1], 'a')
  end
end
`

// seedScript: ARGV now, mode, grace deadline, own lease deadline, n,
// addrs (n of them), then addr, token pairs of IPs the caller holds.
//
// Mode 0 (Seed): the first seed stores addrs as available; later ones
// reconcile. Mode 1 (restore): only if Redis has no pool (it lost its data
// while agents held IPs), it is created with the caller's IPs leased to it
// again and every other IP unclaimed, leased to nobody until the grace
// deadline: agents that held one re-assert their lease by renewing it (or
// return it), and the rest come free when the grace runs out. Returns 1
// when it created the pool.
var seedScript = goredis.NewScript(preamble + `
local existed = known()
local n = tonumber(ARGV[5])
if ARGV[2] == '1' then
  if existed then return 0 end
  local own = {}
  for i = 6 + n, #ARGV, 2 do own[ARGV[i]] = ARGV[i + 1] end
  for i = 6, 5 + n do
    local a = ARGV[i]
    if own[a] then
      redis.call('HSET', KEYS[2], a, 'u' .. own[a] .. '|' .. ARGV[1])
      redis.call('ZADD', KEYS[5], ARGV[4], a)
    else
      redis.call('HSET', KEYS[2], a, 'u|' .. ARGV[1])
      redis.call('ZADD', KEYS[5], ARGV[3], a)
    end
  end
  redis.call('HSET', KEYS[1], 'seeded', '1')
  return 1
end
if existed then promote(ARGV[1]) end
local want = {}
for i = 6, 5 + n do
  local a = ARGV[i]
  if not want[a] then
    want[a] = true
    local st = redis.call('HGET', KEYS[2], a)
    if not st then
      redis.call('HSET', KEYS[2], a, 'a')
      redis.call('RPUSH', KEYS[3], a)
    elseif string.sub(st, 1, 1) == 'U' then
      redis.call('HSET', KEYS[2], a, 'u' .. string.sub(st, 2))
    end
  end
end
local all = redis.call('HGETALL', KEYS[2])
local dropReady = {}
local anyReady = false
for i = 1, #all, 2 do
  local a, st = all[i], all[i + 1]
  if not want[a] then
    local k = string.sub(st, 1, 1)
    if k == 'u' then
      redis.call('HSET', KEYS[2], a, 'U' .. string.sub(st, 2))
    elseif k ~= 'U' then
      if k == 'a' then
        dropReady[a] = true
        anyReady = true
      elseif k == 'c' then
        redis.call('ZREM', KEYS[4], a)
      elseif k == 'q' then
        redis.call('ZREM', KEYS[6], a)
      end
      forget(a)
    end
  end
end
if anyReady then
  -- Rebuild ready without the removed IPs, keeping the order: O(n).
  local keep = {}
  for _, a in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if not dropReady[a] then keep[#keep + 1] = a end
  end
  redis.call('DEL', KEYS[3])
  for i = 1, #keep, 1000 do
    redis.call('RPUSH', KEYS[3], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
redis.call('HSET', KEYS[1], 'seeded', '1')
if existed then return 0 end
return 1
`)

// popScript: ARGV now, n, token, lease deadline. Takes up to n IPs from
// the head of ready (after promoting) and leases them to token. Returns
// {addrs, next}: next is the earliest cooldown end or lease deadline in
// Unix ms when fewer than n IPs were had (-1 when there is none), so a
// waiter knows when to look again.
var popScript = goredis.NewScript(preamble + `
promote(ARGV[1])
local n = tonumber(ARGV[2])
local got = {}
local val = 'u' .. ARGV[3] .. '|' .. ARGV[1]
for i = 1, n do
  local a = redis.call('LPOP', KEYS[3])
  if not a then break end
  redis.call('HSET', KEYS[2], a, val)
  redis.call('ZADD', KEYS[5], ARGV[4], a)
  got[#got + 1] = a
end
local nextAt = -1
if #got == 0 then unknown() end
if #got < n then
  local c = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if #c > 0 then nextAt = tonumber(c[2]) end
  local l = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if #l > 0 and (nextAt < 0 or tonumber(l[2]) < nextAt) then nextAt = tonumber(l[2]) end
end
return {got, nextAt}
`)

// popExceptScript: ARGV now, token, lease deadline, then one group per
// caller, in queue order: k, then the k IPs the caller may not get (its
// except set; k = 0: any IP). Each caller in turn gets the first IP of
// ready (after promoting) outside its set, looking at the first k+1 only
// (one of them is outside it if ready is that long), or the head when
// every IP not quarantined is in its set (IPs in use count: they may come
// back). An IP skipped stays in ready for the next caller. Work is bounded
// by the callers and their sets, not by the pool. Returns {got, next}:
// got has one entry per caller, the IP leased to token, or an empty string;
// next is as popScript's.
var popExceptScript = goredis.NewScript(preamble + `
promote(ARGV[1])
local val = 'u' .. ARGV[2] .. '|' .. ARGV[1]
local rotation = redis.call('HLEN', KEYS[2]) - redis.call('ZCARD', KEYS[6])
local got = {}
local served = 0
local i = 4
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  local ex = {}
  local left = rotation
  for j = i + 1, i + k do
    ex[ARGV[j]] = true
    local st = redis.call('HGET', KEYS[2], ARGV[j])
    if st and st ~= 'q' then left = left - 1 end
  end
  i = i + k + 1
  local a = false
  if k == 0 or left <= 0 then
    a = redis.call('LPOP', KEYS[3])
  else
    for _, h in ipairs(redis.call('LRANGE', KEYS[3], 0, k)) do
      if not ex[h] then
        a = h
        break
      end
    end
    if a then redis.call('LREM', KEYS[3], 1, a) end
  end
  if a then
    redis.call('HSET', KEYS[2], a, val)
    redis.call('ZADD', KEYS[5], ARGV[3], a)
    got[#got + 1] = a
    served = served + 1
  else
    got[#got + 1] = ''
  end
end
local nextAt = -1
if served == 0 then unknown() end
if served < #got then
  local c = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if #c > 0 then nextAt = tonumber(c[2]) end
  local l = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if #l > 0 and (nextAt < 0 or tonumber(l[2]) < nextAt) then nextAt = tonumber(l[2]) end
end
return {got, nextAt}
`)

// pushScript: ARGV now, addr, token, readyAt, reset (1: zero the failure
// count too). Returns 1 when addr was in use by token and went back (or
// left, if no longer configured), 0 for a no-op: not in use, or leased to
// someone else since.
var pushScript = goredis.NewScript(preamble + `
local a = ARGV[2]
local st = redis.call('HGET', KEYS[2], a)
if not st then unknown() end
local k, tok = holder(st)
if not k or ARGV[3] == '' or (tok ~= ARGV[3] and tok ~= '') then return 0 end
if ARGV[5] == '1' then redis.call('HDEL', KEYS[7], a) end
redis.call('ZREM', KEYS[5], a)
if k == 'U' then
  forget(a)
  return 1
end
local untilMs = mark(st)
if untilMs and untilMs > tonumber(ARGV[1]) then
  quarantine(a, untilMs)
  return 1
end
if tonumber(ARGV[4]) > tonumber(ARGV[1]) then
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('HSET', KEYS[2], a, 'c' .. seq)
  redis.call('ZADD', KEYS[4], ARGV[4], a)
else
  promote(ARGV[1])
  redis.call('RPUSH', KEYS[3], a)
  redis.call('HSET', KEYS[2], a, 'a')
end
return 1
`)

// renewScript: ARGV deadline, now, then addr, token pairs. Moves the
// deadline of each lease still held by its token. A holder also takes back
// its IP when it is unclaimed (see seedScript) or sitting in ready (its
// lease ran out while it was cut off, or the pool was seeded afresh after
// Redis lost it): it is still using it. Returns the addrs that are someone
// else's now.
var renewScript = goredis.NewScript(preamble + `
local lost = {}
for i = 3, #ARGV, 2 do
  local a = ARGV[i]
  local st = redis.call('HGET', KEYS[2], a)
  local k, tok = holder(st)
  if k and tok == ARGV[i + 1] then
    redis.call('ZADD', KEYS[5], 'XX', ARGV[1], a)
  elseif k and tok == '' then
    redis.call('HSET', KEYS[2], a, k .. ARGV[i + 1] .. string.sub(st, 2))
    redis.call('ZADD', KEYS[5], ARGV[1], a)
  elseif st == 'a' then
    redis.call('LREM', KEYS[3], 1, a)
    redis.call('HSET', KEYS[2], a, 'u' .. ARGV[i + 1] .. '|' .. ARGV[2])
    redis.call('ZADD', KEYS[5], ARGV[1], a)
  else
    lost[#lost + 1] = a
  end
end
if #lost > 0 then unknown() end
return lost
`)

// incrScript: ARGV addr, reset (1: from zero). Returns the new count (0
// for an unknown addr).
var incrScript = goredis.NewScript(preamble + `
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  unknown()
  return 0
end
if ARGV[2] == '1' then redis.call('HDEL', KEYS[7], ARGV[1]) end
return redis.call('HINCRBY', KEYS[7], ARGV[1], 1)
`)

// resetScript: ARGV addr.
var resetScript = goredis.NewScript(preamble + `
if redis.call('HDEL', KEYS[7], ARGV[1]) == 0 then unknown() end
return 0
`)

// quarantineScript: ARGV addr, until, reset (1: zero the failure count).
// Takes addr out of wherever it is.
var quarantineScript = goredis.NewScript(preamble + `
local a = ARGV[1]
local st = redis.call('HGET', KEYS[2], a)
if not st then
  unknown()
  return 0
end
if ARGV[3] == '1' then redis.call('HDEL', KEYS[7], a) end
local k = string.sub(st, 1, 1)
if k == 'a' then
  redis.call('LREM', KEYS[3], 1, a)
elseif k == 'c' then
  redis.call('ZREM', KEYS[4], a)
elseif k == 'u' then
  redis.call('ZREM', KEYS[5], a)
elseif k == 'U' then
  redis.call('ZREM', KEYS[5], a)
  forget(a)
  return 1
end
redis.call('HSET', KEYS[2], a, 'q')
redis.call('ZADD', KEYS[6], ARGV[2], a)
return 1
`)

// stateScript: ARGV addr. Returns {state, failures, cool, quar, lease}
// of addr (scores as strings, empty when not in the set), or -1 for an addr
// not in the pool.
var stateScript = goredis.NewScript(preamble + `
local a = ARGV[1]
local st = redis.call('HGET', KEYS[2], a)
if not st then
  unknown()
  return -1
end
local function score(k)
  return redis.call('ZSCORE', k, a) or ''
end
return {st, redis.call('HGET', KEYS[7], a) or '', score(KEYS[4]), score(KEYS[6]), score(KEYS[5])}
`)

// takeScript: ARGV now, addr, token, lease deadline. Leases addr to token
// if it is available (after promoting). Returns 1 if it did, 0 if addr is
// not available, -1 if it is not in the pool.
var takeScript = goredis.NewScript(preamble + `
local a = ARGV[2]
local st = redis.call('HGET', KEYS[2], a)
if not st then
  unknown()
  return -1
end
if string.sub(st, 1, 1) == 'c' then
  promote(ARGV[1])
  st = redis.call('HGET', KEYS[2], a)
end
if st ~= 'a' then return 0 end
redis.call('LREM', KEYS[3], 1, a)
redis.call('HSET', KEYS[2], a, 'u' .. ARGV[3] .. '|' .. ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], a)
return 1
`)

// holdScript: ARGV addr, until. Quarantines addr until then whatever its
// state; an IP in use is marked instead (see the states above). Returns 1
// when quarantined, 2 when marked, -1 if addr is not in the pool.
var holdScript = goredis.NewScript(preamble + `
local a = ARGV[1]
local st = redis.call('HGET', KEYS[2], a)
if not st then
  unknown()
  return -1
end
local k = string.sub(st, 1, 1)
if k == 'u' or k == 'U' then
  local _, base = mark(st)
  redis.call('HSET', KEYS[2], a, base .. '|' .. ARGV[2])
  return 2
end
if k == 'a' then
  redis.call('LREM', KEYS[3], 1, a)
elseif k == 'c' then
  redis.call('ZREM', KEYS[4], a)
end
quarantine(a, ARGV[2])
return 1
`)

// unquarantineScript: ARGV addr, now, token, lease deadline. A quarantined
// addr leaves quar, leased to token (returns 1); an in-use addr marked by
// holdScript loses the mark (returns 2). Returns 0 for any other state, -1
// if addr is not in the pool.
var unquarantineScript = goredis.NewScript(preamble + `
local a = ARGV[1]
local st = redis.call('HGET', KEYS[2], a)
if not st then
  unknown()
  return -1
end
if st == 'q' then
  redis.call('ZREM', KEYS[6], a)
  redis.call('HSET', KEYS[2], a, 'u' .. ARGV[3] .. '|' .. ARGV[2])
  redis.call('ZADD', KEYS[5], ARGV[4], a)
  return 1
end
if holder(st) then
  local untilMs, base = mark(st)
  if untilMs then
    redis.call('HSET', KEYS[2], a, base)
    return 2
  end
end
return 0
`)

// popExpiredScript: ARGV now, token, lease deadline. Claims every
// quarantined IP whose time is up: each leaves quar in exactly one call,
// leased to token until it is pushed back.
var popExpiredScript = goredis.NewScript(preamble + `
local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', ARGV[1])
if #due == 0 then
  unknown()
  return due
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[1])
local val = 'u' .. ARGV[2] .. '|' .. ARGV[1]
for _, a in ipairs(due) do
  redis.call('HSET', KEYS[2], a, val)
  redis.call('ZADD', KEYS[5], ARGV[3], a)
end
return due
`)

// nextExpiryScript: returns {} or {release time in Unix ms}.
var nextExpiryScript = goredis.NewScript(preamble + `
local q = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if #q == 0 then
  unknown()
  return {}
end
return {q[2]}
`)

// snapshotScript returns {ip, fail, cool, quar, lease} as flat arrays.
var snapshotScript = goredis.NewScript(preamble + `
local ips = redis.call('HGETALL', KEYS[2])
if #ips == 0 then unknown() end
return {
  ips,
  redis.call('HGETALL', KEYS[7]),
  redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[6], 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES'),
}
`)
