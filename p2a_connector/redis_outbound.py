"""
The Lua scripts of the Redis spool's outbound side: messages to send
(`p2a_connector.outbound`), the receipt index, and the end of idle USSD
sessions.  As in `p2a_connector.redis_scripts`, each change is one script,
and times travel as the strings Python wrote.

Keys, under the spool's hash tag: ``ob:<id>`` (a message), ``obq:<operator>``
(the queued ones by next_at), ``ob_operators``, ``outbound`` (how many are
queued), ``rcpt:<message_id>`` (the message a part's receipt belongs to),
``ussd`` (open sessions by last_at) and ``ussd:<key>``.  A sent or failed
message is given a TTL of outbound_keep, so Redis forgets it by itself.
"""

from __future__ import annotations

from p2a_connector.redis_scripts import QUEUE_OUTBOUND, STORE_EVENT, script

# The fields of a message, in the order the read scripts reply them.
_FIELDS = """
local FIELDS = {'message', 'state', 'attempt', 'next_at', 'reference',
  'parts_sent', 'message_ids', 'error', 'sent_at'}

local function operators(prefix, all, first)
  if all == '1' then return redis.call('SMEMBERS', prefix .. 'ob_operators') end
  local names = {}
  for i = first, #ARGV do names[#names + 1] = ARGV[i] end
  return names
end

local function leave_queue(prefix, ob, id, keep_ms)
  local operator = redis.call('HGET', ob, 'operator')
  redis.call('ZREM', prefix .. 'obq:' .. operator, id)
  redis.call('DECR', prefix .. 'outbound')
  redis.call('PEXPIRE', ob, keep_ms)
end
"""

# ARGV: prefix, now, trail keep in ms, then four per message (queue_all).
_QUEUE = """
local added = queue_all(ARGV[1], ARGV[2], ARGV[3], 4)
return counted(ARGV[1], 'done', {tostring(added)})
"""

# Takes the queued messages due at now, oldest first, at most limit: their
# next_at becomes until.  ARGV: prefix, now, limit, until, all ('1': every
# operator), operators...  Replies each message's id and FIELDS.
_OUTBOUND_DUE = """
local prefix, now, limit, untl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local found = {}
for _, operator in ipairs(operators(prefix, ARGV[5], 6)) do
  local rows = redis.call('ZRANGEBYSCORE', prefix .. 'obq:' .. operator, '-inf',
    now, 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #rows, 2 do
    local seq = redis.call('HGET', prefix .. 'ob:' .. rows[i], 'seq')
    found[#found + 1] = {rows[i], tonumber(rows[i + 1]), tonumber(seq),
      operator}
  end
end
table.sort(found, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end)
local out = {}
for i = 1, math.min(limit, #found) do
  local id, operator = found[i][1], found[i][4]
  local ob = prefix .. 'ob:' .. id
  redis.call('ZADD', prefix .. 'obq:' .. operator, untl, id)
  redis.call('HSET', ob, 'next_at', untl)
  local row = redis.call('HMGET', ob, unpack(FIELDS))
  table.insert(row, 1, id)
  out[#out + 1] = row
end
return out
"""

# ARGV: prefix, all, operators...  Replies the earliest next_at, or nil.
_NEXT_OUTBOUND_DUE = """
local prefix = ARGV[1]
local best, best_id = nil, nil
for _, operator in ipairs(operators(prefix, ARGV[2], 3)) do
  local first = redis.call('ZRANGE', prefix .. 'obq:' .. operator, 0, 0,
    'WITHSCORES')
  if #first > 0 and (best == nil or tonumber(first[2]) < best) then
    best, best_id = tonumber(first[2]), first[1]
  end
end
if not best_id then return nil end
return redis.call('HGET', prefix .. 'ob:' .. best_id, 'next_at')
"""

# Changes a queued message.  ARGV: prefix, id, trail steps, trail keep in ms,
# next_at to queue it at ('' to leave it), then field, value pairs.
_OUTBOUND_UPDATE = """
local prefix, id = ARGV[1], ARGV[2]
local ob = prefix .. 'ob:' .. id
if redis.call('HGET', ob, 'state') ~= 'queued' then
  return counted(prefix, 'ignored')
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', ob, unpack(fields))
if ARGV[5] ~= '' then
  redis.call('ZADD', prefix .. 'obq:' .. redis.call('HGET', ob, 'operator'),
    ARGV[5], id)
end
note(prefix, id, ARGV[3], ARGV[4])
return counted(prefix, 'done')
"""

# ARGV: prefix, id, trail steps, trail keep in ms, now, reference, parts,
# message_ids JSON, outbound_keep in ms, receipt_keep in ms, receipt keys
# (`outbound.receipt_key`)...
_OUTBOUND_SENT = """
local prefix, id = ARGV[1], ARGV[2]
local ob = prefix .. 'ob:' .. id
if redis.call('HGET', ob, 'state') ~= 'queued' then
  return counted(prefix, 'ignored')
end
redis.call('HSET', ob, 'state', 'sent', 'sent_at', ARGV[5], 'reference', ARGV[6],
  'parts_sent', ARGV[7], 'message_ids', ARGV[8])
redis.call('HDEL', ob, 'error')
leave_queue(prefix, ob, id, ARGV[9])
for i = 11, #ARGV do
  redis.call('SET', prefix .. 'rcpt:' .. ARGV[i], id, 'PX', ARGV[10])
end
note(prefix, id, ARGV[3], ARGV[4])
return counted(prefix, 'done')
"""

# ARGV: prefix, group, id, attempt, reason, outbound_keep in ms, trail steps,
# trail keep in ms, then the reply.failed event as STORE takes it from its
# id on (id, type, webhook, body, created_at, now, steps, keep, context).
_OUTBOUND_FAILED = """
local prefix, group, id = ARGV[1], ARGV[2], ARGV[3]
local ob = prefix .. 'ob:' .. id
if redis.call('HGET', ob, 'state') ~= 'queued' then
  return counted(prefix, 'ignored')
end
redis.call('HSET', ob, 'state', 'failed', 'attempt', ARGV[4], 'error', ARGV[5])
leave_queue(prefix, ob, id, ARGV[6])
note(prefix, id, ARGV[7], ARGV[8])
store_event(prefix, group, ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13],
  ARGV[14], ARGV[15], ARGV[16], context(17))
return counted(prefix, 'done')
"""

# Ends a USSD session that went idle and stores its session.ended event,
# unless a message refreshed it since it was read (last_at differs) or
# another instance ended it.  ARGV: prefix, group, key, last_at read, then
# the event as STORE takes it from its id on.
_END_IDLE_SESSION = """
local prefix, group, key = ARGV[1], ARGV[2], ARGV[3]
local session = prefix .. 'ussd:' .. key
if redis.call('HGET', session, 'last_at') ~= ARGV[4] then
  return counted(prefix, 'stale')
end
redis.call('DEL', session)
redis.call('ZREM', prefix .. 'ussd', key)
local added = store_event(prefix, group, ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], ARGV[10], ARGV[11], ARGV[12], context(13))
return counted(prefix, added == 1 and 'stored' or 'duplicate')
"""

# ARGV: prefix, key.
_END_SESSION = """
redis.call('DEL', ARGV[1] .. 'ussd:' .. ARGV[2])
redis.call('ZREM', ARGV[1] .. 'ussd', ARGV[2])
return 1
"""


QUEUE = script("queue", STORE_EVENT, QUEUE_OUTBOUND, _QUEUE)
OUTBOUND_DUE = script("outbound_due", _FIELDS, _OUTBOUND_DUE)
NEXT_OUTBOUND_DUE = script("next_outbound_due", _FIELDS, _NEXT_OUTBOUND_DUE)
OUTBOUND_UPDATE = script("outbound_update", STORE_EVENT, _OUTBOUND_UPDATE)
OUTBOUND_SENT = script("outbound_sent", STORE_EVENT, _FIELDS, _OUTBOUND_SENT)
OUTBOUND_FAILED = script("outbound_failed", STORE_EVENT, _FIELDS, _OUTBOUND_FAILED)
END_IDLE_SESSION = script("end_idle_session", STORE_EVENT, _END_IDLE_SESSION)
END_SESSION = script("end_session", _END_SESSION)

ALL = (
    QUEUE,
    OUTBOUND_DUE,
    NEXT_OUTBOUND_DUE,
    OUTBOUND_UPDATE,
    OUTBOUND_SENT,
    OUTBOUND_FAILED,
    END_IDLE_SESSION,
    END_SESSION,
)
