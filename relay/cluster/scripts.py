"""The Lua scripts that make each step of a lease holder atomic in Redis.

Every write of a holder is checked against its lease in the same script, so a
holder that lost its lease (paused, cut off, overtaken) cannot publish: the
lease's value carries the fencing number, and a new holder always has a
higher one.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACQUIRE", "COMMIT", "FAILED", "RELEASE", "RENEW", "SETTLE", "STATUS"]

#: KEYS: lease, fence. ARGV: relay id, ttl (ms), the highest fencing number the relay saw.
#: The new lease's value, or, if it is held, the milliseconds the holder's has left. The
#: fencing number never goes back, even if Redis lost its data.
ACQUIRE: Final = """
local fence = math.max(tonumber(redis.call('GET', KEYS[2])) or 0, tonumber(ARGV[3])) + 1
local lease = ARGV[1] .. ':' .. string.format('%d', fence)
if not redis.call('SET', KEYS[1], lease, 'NX', 'PX', ARGV[2]) then
  return redis.call('PTTL', KEYS[1])
end
redis.call('SET', KEYS[2], fence)
return lease
"""

#: KEYS: lease. ARGV: lease, ttl (ms). 1 if the lease was still ours and now lives on.
RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: KEYS: lease. ARGV: lease. Gives the lease up at once, if it is still ours.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS: lease, seq, latest, history, then one claim key per alert.
#: ARGV: lease, the highest seq the holder knows, the snapshot's JSON after its seq,
#: the oldest stream id to keep, the channel, the source (JSON), the relay id,
#: the claims' ttl (ms), then each alert's JSON. The message names the lease ("by").
#: Numbers the snapshot (never below what the holder has seen, so seq keeps rising even
#: if Redis lost its data), stores it, appends it to the history stream, claims the
#: alerts no relay raised before, and publishes all of it in one message.
#: Returns {seq, stream id, 1 or 0 per alert: claimed here}, or nil without the lease.
COMMIT: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local seq = math.max(tonumber(redis.call('GET', KEYS[2])) or 0, tonumber(ARGV[2])) + 1
redis.call('SET', KEYS[2], seq)
local snapshot = '{"seq":' .. string.format('%d', seq) .. ARGV[3]
redis.call('SET', KEYS[3], snapshot)
local id = redis.call('XADD', KEYS[4], 'MINID', '~', ARGV[4], '*', 'snapshot', snapshot)
local reply = {seq, id}
local alerts = {}
for i = 5, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[7], 'NX', 'PX', ARGV[8]) then
    table.insert(alerts, ARGV[i + 4])
    table.insert(reply, 1)
  else
    table.insert(reply, 0)
  end
end
redis.call('PUBLISH', ARGV[5], '{"t":"update","source":' .. ARGV[6] .. ',"id":"' .. id ..
  '","by":"' .. ARGV[1] .. '","alerts":[' .. table.concat(alerts, ',') ..
  '],"snapshot":' .. snapshot .. '}')
return reply
"""

#: KEYS: lease, status. ARGV: lease, status JSON, channel, source (JSON).
STATUS: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3],
  '{"t":"status","source":' .. ARGV[4] .. ',"status":' .. ARGV[2] .. '}')
return 1
"""

#: KEYS: lease, history. ARGV: lease, when (JSON string), oldest id to keep, channel,
#: source (JSON). A failed poll, for every relay's ledger.
FAILED: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[3], '*', 'failed', ARGV[2])
redis.call('PUBLISH', ARGV[4], '{"t":"failed","source":' .. ARGV[5] .. ',"id":"' .. id ..
  '","at":' .. ARGV[2] .. '}')
return id
"""

#: KEYS: claim. ARGV: the delivery's JSON (or "" to give the claim up), ttl (ms), channel.
#: Settles a report's delivery for the whole cluster and tells the other relays.
SETTLE: Final = """
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('PUBLISH', ARGV[3], '{"t":"report"}')
end
return 1
"""
