"""
The Lua scripts of the shared state: each runs atomically in Redis, so
counts checked against a limit and the count itself cannot race between
replicas.

Times (ms) come from the calling replica's clock, as arguments; Redis's
own expiry (C{PEXPIRE}) only collects what nobody reads any more.  Every
script reads and writes the keys it is given, and the replicas' hashes
named by the registry (a standalone Redis or a Sentinel pair; Redis
Cluster would need all keys in one slot).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BAN",
    "BANNED",
    "CLAIM",
    "COUNT",
    "FAILED",
    "FORGIVE",
    "HEARTBEAT",
    "LEAVE",
    "FORGET",
    "QUOTA_ADD",
    "REPLACE",
    "Script",
]


@dataclass(frozen=True)
class Script:
    name: str
    text: str


#: KEYS: registry, own hash.  ARGV: replica, now, lease.
HEARTBEAT = Script(
    "heartbeat",
    """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - 10 * lease))
redis.call('PEXPIRE', KEYS[2], 2 * lease)
return 1
""",
)

#: KEYS: registry, own hash.  ARGV: replica.
LEAVE = Script(
    "leave",
    """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
""",
)

# The sum of one field over the replicas whose lease runs at `now`.
_SUM = """
local function cluster_sum(registry, replicas, now, field)
  local sum = 0
  for _, r in ipairs(redis.call('ZRANGEBYSCORE', registry, now, '+inf')) do
    sum = sum + (tonumber(redis.call('HGET', replicas .. r, field)) or 0)
  end
  return sum
end
local function put(hash, field, value)
  if value > 0 then redis.call('HSET', hash, field, value)
  else redis.call('HDEL', hash, field) end
end
"""

#: Publish this replica's values of some fields and check their cluster
#: sums against limits; a sum over its limit puts every field back to its
#: fallback.  KEYS: registry, own hash.  ARGV: replica, now, lease, the
#: replicas' hash prefix, then per field: name, value, limit (0: none),
#: fallback.  Answers {0, 0}, or {n, sum}: the n-th field's sum is over.
COUNT = Script(
    "count",
    _SUM
    + """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
for i = 5, #ARGV, 4 do put(KEYS[2], ARGV[i], tonumber(ARGV[i + 1])) end
redis.call('PEXPIRE', KEYS[2], 2 * lease)
for i = 5, #ARGV, 4 do
  local limit = tonumber(ARGV[i + 2])
  if limit > 0 then
    local sum = cluster_sum(KEYS[1], ARGV[4], now, ARGV[i])
    if sum > limit then
      for j = 5, #ARGV, 4 do put(KEYS[2], ARGV[j], tonumber(ARGV[j + 3])) end
      return {(i - 1) / 4, sum}
    end
  end
end
return {0, 0}
""",
)

#: All of this replica's values at once, after Redis was away.  KEYS:
#: registry, own hash.  ARGV: replica, now, lease, then field, value pairs.
REPLACE = Script(
    "replace",
    """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', KEYS[2], 2 * lease)
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
return 1
""",
)

#: KEYS: ban.  ARGV: now.  Answers the ms of ban left (0: none).
BANNED = Script(
    "banned",
    """
local ends = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = ends - tonumber(ARGV[1])
if left > 0 then return left end
return 0
""",
)

#: One failed login.  KEYS: failures, ban.  ARGV: now, window, max
#: failures (0: never ban), ban time, a unique member, most failures kept.
#: Answers {failures within the window, ms of ban left, 1 if this failure
#: banned}.
FAILED = Script(
    "failed",
    """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[6]) + 1))
redis.call('PEXPIRE', KEYS[1], window)
local count = redis.call('ZCARD', KEYS[1])
local ends = tonumber(redis.call('GET', KEYS[2]) or '0')
if ends > now then return {count, ends - now, 0} end
local most, ban = tonumber(ARGV[3]), tonumber(ARGV[4])
if most > 0 and count >= most then
  redis.call('SET', KEYS[2], now + ban, 'PX', ban)
  return {count, ban, 1}
end
return {count, 0, 0}
""",
)

#: A ban a replica holds, put back after Redis lost it (a restart without
#: persistence) or missed it (earned while Redis was away); a longer one
#: already there stays.  KEYS: ban.  ARGV: now, ms left.
BAN = Script(
    "ban",
    """
local ends = tonumber(ARGV[1]) + tonumber(ARGV[2])
if ends > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ends, 'PX', ARGV[2])
end
return 1
""",
)

#: A login succeeded: the address's failures are forgotten (not its ban).
#: KEYS: failures.
FORGIVE = Script("forgive", "return redis.call('DEL', KEYS[1])")

#: Set this replica's claim of a quota: what its uploads in progress hold
#: (C{need}) and a spare beyond that, half of the room left or, if more,
#: as much of it as C{floor} (bytes or files), so that a replica asks again
#: only when its spare runs low, others keep room of their own when the
#: quota is large, and a small quota is not split too thin for an upload.
#: A claim never takes more than the room: when C{need} is not there, the
#: replica keeps at most what it held.  KEYS: registry, own hash, quota.
#: ARGV: replica, now, lease, the replicas' hash prefix, quota id, byte
#: limit (-1: none), file limit (-1: none), needed bytes, needed files,
#: floor.
#: Answers {computed (0/1), claimed bytes, claimed files, bytes, files,
#: kept, every replica's claimed bytes, claimed files}.
CLAIM = Script(
    "claim",
    _SUM
    + """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local qid, floor = ARGV[5], tonumber(ARGV[10])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[2], 2 * lease)
local u = redis.call('HMGET', KEYS[3], 'bytes', 'files', 'kept')
local computed = 0
if u[1] then computed = 1 end
local bytes, files, kept = tonumber(u[1]) or 0, tonumber(u[2]) or 0, tonumber(u[3]) or 0
local function claim(field, limit, used, need)
  local had = tonumber(redis.call('HGET', KEYS[2], field)) or 0
  local all = cluster_sum(KEYS[1], ARGV[4], now, field)
  if limit < 0 then return 0, all - had end
  local free = limit - used - (all - had)
  local grant
  local spare = math.max(math.floor((free - need) / 2), math.min(free - need, floor))
  if free >= need then grant = need + spare
  else grant = math.max(math.min(had, need), 0) end
  put(KEYS[2], field, grant)
  return grant, all - had + grant
end
local gb, ab = claim('qb:' .. qid, tonumber(ARGV[6]), bytes + kept, tonumber(ARGV[8]))
local gf, af = claim('qf:' .. qid, tonumber(ARGV[7]), files, tonumber(ARGV[9]))
return {computed, gb, gf, bytes, files, kept, ab, af}
""",
)

#: Add to a quota's usage (a commit, a delete, kept parts) and set this
#: replica's claim, in one step.  KEYS: registry, own hash, quota.  ARGV:
#: replica, now, lease, quota id, bytes, files, kept (each added, may be
#: negative; the usage never goes below 0), claimed bytes, claimed files,
#: then 1 to set the usage from the given numbers (a replica's first
#: computation) if no replica has yet, and the ms the computation is
#: trusted for (the usage is listed again after that).
QUOTA_ADD = Script(
    "quota_add",
    _SUM
    + """
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local qid = ARGV[4]
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('HEXISTS', KEYS[3], 'bytes') == 1 then
  for i, f in ipairs({'bytes', 'files', 'kept'}) do
    if redis.call('HINCRBY', KEYS[3], f, tonumber(ARGV[4 + i])) < 0 then
      redis.call('HSET', KEYS[3], f, 0)
    end
  end
elseif ARGV[10] == '1' then
  redis.call('HSET', KEYS[3], 'bytes', ARGV[5], 'files', ARGV[6], 'kept', ARGV[7])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[11]))
end
put(KEYS[2], 'qb:' .. qid, tonumber(ARGV[8]))
put(KEYS[2], 'qf:' .. qid, tonumber(ARGV[9]))
redis.call('PEXPIRE', KEYS[2], 2 * lease)
return 1
""",
)

#: KEYS: one key to delete (a quota's usage to compute again).
FORGET = Script("forget", "return redis.call('DEL', KEYS[1])")
