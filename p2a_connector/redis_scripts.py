"""
The Lua scripts of the Redis spool: each change to the spool is one script,
so it happens whole or not at all, whichever instance runs it.  Here the
events (store, deliver, retry, dead-letter, hand out) and what the other
script modules share; reassembly in `p2a_connector.redis_reassembly_scripts`,
the outbound side in `p2a_connector.redis_outbound`.

Every key carries the spool's hash tag (``{p2a}:...``), so all of them hash
to one slot.  Most scripts build their keys inside Lua from the prefix in
ARGV (the caller often knows only an event id); they are called with the
spool's counts key declared (`p2a_connector.redis_commands`), so a Redis
Cluster runs them on the master of that one slot or answers MOVED.  On a
cluster the spool is split into shards with a tag each
(`p2a_connector.redis_shards`).

Floats (times) travel as the strings Python wrote and are stored as they
came: Lua would print them with 14 digits and lose precision.
"""

from __future__ import annotations

import hashlib

import attrs


@attrs.frozen
class Script:
    name: str
    source: bytes
    sha: str = attrs.field()

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source).hexdigest()


# Shared by the scripts that add an event to the delivery queue.  What a
# script does once however many events it touches: each stream made sure of
# once, the pending counter changed once by the sum, and the webhooks given
# events published once (p2a_connector.redis_wakeups), in counted().
_STORE_EVENT = """
local ensured, pending_change, stored_for = {}, 0, {}
-- Set by scripts that keep changes to write once, at the end (see counted).
local flush_writes = nil

local function ensure_group(stream, group)
  if ensured[stream] then return end
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  end
  ensured[stream] = true
end

-- Appends steps (JSON, one per line) to an event's trail and keeps it for
-- keep ms from now; keep 0: no trail.
local function note(prefix, id, steps, keep)
  if tonumber(keep) <= 0 or steps == '' then return end
  local trail = prefix .. 'trail:' .. id
  local lines = {}
  for line in string.gmatch(steps, '[^\\n]+') do
    lines[#lines + 1] = line
  end
  redis.call('RPUSH', trail, unpack(lines))
  redis.call('PEXPIRE', trail, keep)
end

-- The conversation and USSD session of a message being stored, from seven
-- ARGV starting at first: conversation key ('' for none), a fresh
-- conversation id, its started_at as ISO text, conversation_idle in s,
-- USSD session key ('' for none), the session's info JSON, '1' if the
-- message ended the session.
local function context(first)
  return {conversation = ARGV[first], fresh = ARGV[first + 1],
    fresh_iso = ARGV[first + 2], idle = ARGV[first + 3],
    ussd = ARGV[first + 4], info = ARGV[first + 5], ended = ARGV[first + 6]}
end

-- Continues or starts the conversation; replies its JSON object.
local function converse(prefix, ctx, created)
  local key = prefix .. 'cnv:' .. ctx.conversation
  local kept = redis.call('HMGET', key, 'id', 'turn', 'started_at', 'started_iso',
    'last_at')
  local id, turn, started, iso, last = ctx.fresh, 1, created, ctx.fresh_iso, created
  if kept[1] and tonumber(created) - tonumber(kept[5]) <= tonumber(ctx.idle) then
    id, turn, started, iso = kept[1], tonumber(kept[2]) + 1, kept[3], kept[4]
    if tonumber(created) < tonumber(kept[5]) then last = kept[5] end
  end
  redis.call('HSET', key, 'id', id, 'turn', turn, 'started_at', started,
    'started_iso', iso, 'last_at', last)
  -- Past the idle time it cannot continue; a minute more for clock skew.
  redis.call('PEXPIRE', key, math.floor(tonumber(ctx.idle) * 1000) + 60000)
  return '{"id":"' .. id .. '","turn":' .. string.format('%d', turn) ..
    ',"started_at":"' .. iso .. '"}'
end

local function fill(body, conversation)
  local first, last = string.find(body, '"conversation":null', 1, true)
  if not first then return body end
  return string.sub(body, 1, first - 1) .. '"conversation":' .. conversation ..
    string.sub(body, last + 1)
end

local function touch_session(prefix, ctx, webhook, id, created)
  local key = prefix .. 'ussd:' .. ctx.ussd
  if ctx.ended == '1' then
    redis.call('DEL', key)
    redis.call('ZREM', prefix .. 'ussd', ctx.ussd)
    return
  end
  redis.call('HSET', key, 'webhook', webhook, 'info', ctx.info,
    'last_message_id', id, 'last_at', created)
  redis.call('ZADD', prefix .. 'ussd', created, ctx.ussd)
end

-- Replies 1 and the conversation JSON ('' for none) if the event was new,
-- 0 if it was kept already.
local function store_event(prefix, group, id, etype, webhook, body, created, now,
    steps, keep, ctx)
  local ev = prefix .. 'ev:' .. id
  if redis.call('EXISTS', ev) == 1 then
    return 0, ''
  end
  local conversation = ''
  if ctx and ctx.conversation ~= '' then
    conversation = converse(prefix, ctx, created)
    body = fill(body, conversation)
  end
  if ctx and ctx.ussd ~= '' then
    touch_session(prefix, ctx, webhook, id, created)
  end
  note(prefix, id, steps, keep)
  local stream = prefix .. 'events:' .. webhook
  if not ensured[stream] then
    redis.call('SADD', prefix .. 'webhooks', webhook)
    ensure_group(stream, group)
  end
  local entry = redis.call('XADD', stream, '*', 'id', id)
  redis.call('HSET', ev, 'type', etype, 'webhook', webhook, 'body', body,
    'created_at', created, 'state', 'pending', 'attempt', '0',
    'next_at', now, 'entry', entry)
  pending_change = pending_change + 1
  stored_for[webhook] = true
  return 1, conversation
end

-- The counts travel as one JSON string: the client parses a nested reply
-- element by element in Python, one JSON string at C speed.  Last comes the
-- number of queued outbound messages.
local function counted(prefix, status, extra)
  if flush_writes then
    flush_writes(prefix)
  end
  if pending_change ~= 0 then
    redis.call('INCRBY', prefix .. 'pending', pending_change)
    pending_change = 0
  end
  if next(stored_for) then
    local names = {}
    for webhook in pairs(stored_for) do names[#names + 1] = webhook end
    -- A hint: refused (an ACL without the channel), it must not fail the
    -- writes before it.
    redis.pcall('PUBLISH', prefix .. 'stored', cjson.encode(names))
    stored_for = {}
  end
  return {status, cjson.encode(redis.call('HGETALL', prefix .. 'counts')),
    redis.call('GET', prefix .. 'pending') or '0', extra or {},
    redis.call('GET', prefix .. 'outbound') or '0'}
end

local function forget_entry(prefix, group, ev)
  local webhook, entry = unpack(redis.call('HMGET', ev, 'webhook', 'entry'))
  if entry then
    local stream = prefix .. 'events:' .. webhook
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', ev, 'entry')
  end
  return webhook
end
"""

# Stores every event of a batch.  ARGV: prefix, group, then fifteen per
# event: id, type, webhook, body, created_at, now, trail steps, trail keep
# in ms, the seven of context().  Its extra is one JSON array (one string
# to parse, not an element per value) with, per event, ['stored' or
# 'duplicate', the conversation JSON given to it ('' for none)].
_STORE = """
local prefix, group = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 15 do
  local added, conversation = store_event(prefix, group, ARGV[i], ARGV[i + 1],
    ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7],
    context(i + 8))
  out[#out + 1] = {added == 1 and 'stored' or 'duplicate', conversation}
end
return counted(prefix, 'done', {cjson.encode(out)})
"""

# Records the deliveries of a batch.  ARGV: prefix, group, trail keep in
# ms, then per delivery: id, trail step, now, the number of replies to
# queue and four ARGV per reply (see queue_all).  The stream entries are
# acknowledged and deleted per stream, a command for them all: one XDEL
# per entry costs twice as much.  The event goes before its trail grows:
# at maxmemory Redis refuses a script whose first write may take memory
# (RPUSH), not one whose first write frees it (DEL), so deliveries are
# still recorded, and free memory, while stores get the busy status.
_DELIVERED = """
local prefix, group, keep = ARGV[1], ARGV[2], ARGV[3]
local entries = {}
local i = 4
while i <= #ARGV do
  local id, step, now, replies = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local ev = prefix .. 'ev:' .. id
  local state, webhook, entry, attempt = unpack(redis.call('HMGET', ev, 'state',
    'webhook', 'entry', 'attempt'))
  if state == 'pending' then
    redis.call('DEL', ev)
    pending_change = pending_change - 1
    note(prefix, id, step, keep)
    if entry then
      local stream = prefix .. 'events:' .. webhook
      entries[stream] = entries[stream] or {}
      table.insert(entries[stream], entry)
    end
    -- Only an event that failed an attempt can be in the retry set.
    if attempt ~= '0' then
      redis.call('ZREM', prefix .. 'retry:' .. webhook, id)
    end
  end
  queue_all(prefix, now, keep, i + 4, i + 3 + 4 * replies)
  i = i + 4 + 4 * replies
end
for stream, ids in pairs(entries) do
  redis.call('XACK', stream, group, unpack(ids))
  redis.call('XDEL', stream, unpack(ids))
end
return counted(prefix, 'done')
"""

# ARGV: prefix, group, id, attempt, next_at, error, trail step, keep in ms.
# The stream entry goes first, a write that takes no memory, so that at
# maxmemory the outcome is still recorded (see _DELIVERED), not posted again.
_RETRY = """
local prefix, group, id = ARGV[1], ARGV[2], ARGV[3]
local ev = prefix .. 'ev:' .. id
if redis.call('HGET', ev, 'state') == 'pending' then
  local webhook = forget_entry(prefix, group, ev)
  note(prefix, id, ARGV[7], ARGV[8])
  redis.call('HSET', ev, 'attempt', ARGV[4], 'next_at', ARGV[5], 'error', ARGV[6])
  redis.call('ZADD', prefix .. 'retry:' .. webhook, ARGV[5], id)
end
return counted(prefix, 'done')
"""

# ARGV: prefix, group, id, attempt, reason, now, trail step, keep in ms.
# The stream entry goes first, as in _RETRY.
_DEAD = """
local prefix, group, id = ARGV[1], ARGV[2], ARGV[3]
local ev = prefix .. 'ev:' .. id
if redis.call('HGET', ev, 'state') == 'pending' then
  local webhook = forget_entry(prefix, group, ev)
  note(prefix, id, ARGV[7], ARGV[8])
  redis.call('ZREM', prefix .. 'retry:' .. webhook, id)
  local letter = redis.call('XADD', prefix .. 'dead', '*', 'id', id)
  redis.call('HSET', ev, 'state', 'dead', 'attempt', ARGV[4], 'error', ARGV[5],
    'failed_at', ARGV[6], 'letter', letter)
  redis.call('DECR', prefix .. 'pending')
end
return counted(prefix, 'done')
"""

# For p2a_connector.redis_outbound, whose scripts store events too.
STORE_EVENT = _STORE_EVENT

# Shared by the scripts that queue outbound messages.  A message is a hash
# ob:<id>; while queued its id is in the sorted set obq:<operator> by next_at
# (seq, from a counter, keeps the order they were queued in among equal
# times), and the counter 'outbound' counts the queued ones.
QUEUE_OUTBOUND = """
local function queue_outbound(prefix, id, operator, message, now, steps, keep)
  local ob = prefix .. 'ob:' .. id
  if redis.call('EXISTS', ob) == 1 then return 0 end
  redis.call('HSET', ob, 'operator', operator, 'message', message,
    'state', 'queued', 'attempt', '0', 'next_at', now, 'reference', '0',
    'parts_sent', '0', 'message_ids', '[]',
    'seq', redis.call('INCR', prefix .. 'ob_seq'))
  redis.call('ZADD', prefix .. 'obq:' .. operator, now, id)
  redis.call('SADD', prefix .. 'ob_operators', operator)
  redis.call('INCR', prefix .. 'outbound')
  note(prefix, id, steps, keep)
  return 1
end

-- Queues the messages in ARGV from first to last (#ARGV if not given), four
-- each: id, operator, message JSON, trail steps.
local function queue_all(prefix, now, keep, first, last)
  local added = 0
  for i = first, last or #ARGV, 4 do
    added = added + queue_outbound(prefix, ARGV[i], ARGV[i + 1], ARGV[i + 2], now,
      ARGV[i + 3], keep)
  end
  return added
end
"""

# The dead letters named in ARGV[4...], or all of them when ARGV[3] is '1'.
_DEAD_IDS = """
local function dead_ids(prefix, all, first)
  local ids = {}
  if all == '1' then
    for _, letter in ipairs(redis.call('XRANGE', prefix .. 'dead', '-', '+')) do
      ids[#ids + 1] = letter[2][2]
    end
  else
    for i = first, #ARGV do ids[#ids + 1] = ARGV[i] end
  end
  return ids
end

local function take_letter(prefix, id)
  local ev = prefix .. 'ev:' .. id
  if redis.call('HGET', ev, 'state') ~= 'dead' then return nil end
  redis.call('XDEL', prefix .. 'dead', redis.call('HGET', ev, 'letter'))
  return ev
end
"""

# ARGV: prefix, group, all, now, trail step, trail keep in ms, ids...
_REPLAY = """
local prefix, group = ARGV[1], ARGV[2]
local count = 0
for _, id in ipairs(dead_ids(prefix, ARGV[3], 7)) do
  local ev = take_letter(prefix, id)
  if ev then
    note(prefix, id, ARGV[5], ARGV[6])
    local webhook = redis.call('HGET', ev, 'webhook')
    local stream = prefix .. 'events:' .. webhook
    ensure_group(stream, group)
    stored_for[webhook] = true
    local entry = redis.call('XADD', stream, '*', 'id', id)
    redis.call('HDEL', ev, 'error', 'failed_at', 'letter')
    redis.call('HSET', ev, 'state', 'pending', 'attempt', '0', 'next_at', ARGV[4],
      'entry', entry)
    redis.call('INCR', prefix .. 'pending')
    count = count + 1
  end
end
return counted(prefix, 'done', {tostring(count)})
"""

# ARGV: prefix, group, all, trail step, trail keep in ms, ids...
_PURGE = """
local prefix = ARGV[1]
local count = 0
for _, id in ipairs(dead_ids(prefix, ARGV[3], 6)) do
  local ev = take_letter(prefix, id)
  if ev then
    note(prefix, id, ARGV[4], ARGV[5])
    redis.call('DEL', ev)
    count = count + 1
  end
end
return counted(prefix, 'done', {tostring(count)})
"""

# ARGV: prefix, limit.
_DEAD_LETTERS = """
local out = {}
local letters = redis.call('XRANGE', ARGV[1] .. 'dead', '-', '+', 'COUNT', ARGV[2])
for _, letter in ipairs(letters) do
  local id = letter[2][2]
  local row = redis.call('HMGET', ARGV[1] .. 'ev:' .. id, 'type', 'webhook',
    'error', 'attempt', 'created_at', 'failed_at')
  table.insert(row, 1, id)
  out[#out + 1] = row
end
return out
"""

# Moves the retries of one webhook that are due into its stream, then hands
# this consumer, in order: its own unacknowledged entries (when own is '1'),
# entries other consumers left idle for claim_idle ms (when claim_idle is not
# '0'), and new entries; at most limit, none in exclude.  Replies one JSON
# array: the rows, each [id, type, webhook, body, attempt, created_at,
# next_at], and whether every own entry not excluded is among them (false
# when own is '0').  JSON because a nested reply would be parsed element by
# element in Python, the JSON at C speed.
# ARGV: prefix, group, consumer, webhook, now, limit, claim_idle, own,
# exclude...
_DUE = """
local prefix, group, consumer, webhook = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit = tonumber(ARGV[6])
local stream = prefix .. 'events:' .. webhook
local retry = prefix .. 'retry:' .. webhook
local exclude = {}
for i = 9, #ARGV do exclude[ARGV[i]] = true end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', retry, '-inf', ARGV[5])) do
  local ev = prefix .. 'ev:' .. id
  if redis.call('HGET', ev, 'state') == 'pending' then
    ensure_group(stream, group)
    redis.call('HSET', ev, 'entry', redis.call('XADD', stream, '*', 'id', id))
  end
  redis.call('ZREM', retry, id)
end
if redis.call('EXISTS', stream) == 0 then return '[[],false]' end

local out, seen = {}, {}
local function take(entries)
  for _, entry in ipairs(entries) do
    if #out >= limit then return end
    local entry_id, fields = entry[1], entry[2]
    if not fields or #fields < 2 then
      redis.call('XACK', stream, group, entry_id)
    elseif not exclude[fields[2]] and not seen[entry_id] then
      local id = fields[2]
      local row = redis.call('HMGET', prefix .. 'ev:' .. id, 'type', 'webhook',
        'body', 'attempt', 'created_at', 'next_at', 'state', 'entry')
      if row[7] == 'pending' and row[8] == entry_id then
        seen[entry_id] = true
        out[#out + 1] = {id, row[1], row[2], row[3], row[4], row[5], row[6]}
      else
        redis.call('XACK', stream, group, entry_id)
        redis.call('XDEL', stream, entry_id)
      end
    end
  end
end

local complete = false
if ARGV[8] == '1' then
  local wanted = limit + #ARGV - 8
  local mine = redis.call('XREADGROUP', 'GROUP', group, consumer,
    'COUNT', wanted, 'STREAMS', stream, '0')
  local entries = mine and mine[1][2] or {}
  take(entries)
  complete = #entries < wanted and #out < limit
end
if #out < limit and ARGV[7] ~= '0' then
  local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[7],
    '0-0', 'COUNT', limit - #out)
  take(claimed[2])
end
if #out < limit then
  local new = redis.call('XREADGROUP', 'GROUP', group, consumer,
    'COUNT', limit - #out, 'STREAMS', stream, '>')
  if new then take(new[1][2]) end
end
if #out == 0 then return complete and '[[],true]' or '[[],false]' end
return cjson.encode({out, complete})
"""

# When the next event of one webhook not in exclude can be handed out: a
# retry's next_at, an entry waiting in the stream, or the moment another
# consumer's entry becomes claimable, and this consumer looks for claimable
# entries again (claim_after).  Replies the time as a string, or nil.
# ARGV: prefix, group, consumer, webhook, now, claim_idle, claim_after,
# exclude...
_NEXT_DUE = """
local prefix, group, consumer, webhook = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, claim_idle = tonumber(ARGV[5]), tonumber(ARGV[6])
local claim_after = tonumber(ARGV[7])
local stream = prefix .. 'events:' .. webhook
local exclude = {}
for i = 8, #ARGV do exclude[ARGV[i]] = true end
local best, best_text = nil, nil
local function offer(text)
  local at = tonumber(text)
  if at and (best == nil or at < best) then best, best_text = at, text end
end
local function next_at(id)
  return redis.call('HGET', prefix .. 'ev:' .. id, 'next_at')
end

local scheduled = redis.call('ZRANGE', prefix .. 'retry:' .. webhook,
  0, #ARGV - 7, 'WITHSCORES')
for i = 1, #scheduled, 2 do
  if not exclude[scheduled[i]] then
    offer(next_at(scheduled[i]) or scheduled[i + 1])
    break
  end
end
if redis.call('EXISTS', stream) == 0 then return best_text end

local last = '0-0'
for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, delivered = nil, nil
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1] end
    if info[i] == 'last-delivered-id' then delivered = info[i + 1] end
  end
  if name == group then last = delivered end
end
local unread = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
if #unread > 0 then offer(next_at(unread[1][2][2]) or ARGV[5]) end

for _, held in ipairs(redis.call('XPENDING', stream, group, '-', '+', 1000)) do
  local entry = redis.call('XRANGE', stream, held[1], held[1])
  if #entry > 0 then
    local id = entry[1][2][2]
    if held[2] == consumer then
      if not exclude[id] then offer(next_at(id) or ARGV[5]) end
    else
      local wait = math.max(0, claim_idle - held[3]) / 1000
      offer(string.format('%.17g', math.max(now + wait, claim_after)))
    end
  end
end
return best_text
"""

# Sets the pending counter from what the queues hold, in case a bug or a
# manual change made it drift.  ARGV: prefix.
_RECOUNT = """
local prefix = ARGV[1]
local pending = 0
for _, webhook in ipairs(redis.call('SMEMBERS', prefix .. 'webhooks')) do
  pending = pending + redis.call('XLEN', prefix .. 'events:' .. webhook)
  pending = pending + redis.call('ZCARD', prefix .. 'retry:' .. webhook)
end
redis.call('SET', prefix .. 'pending', pending)
local queued = 0
for _, operator in ipairs(redis.call('SMEMBERS', prefix .. 'ob_operators')) do
  queued = queued + redis.call('ZCARD', prefix .. 'obq:' .. operator)
end
redis.call('SET', prefix .. 'outbound', queued)
return counted(prefix, 'done')
"""

# ARGV: prefix.
_COUNTS = """
return counted(ARGV[1], 'done')
"""


def script(name: str, *parts: str) -> Script:
    return Script(name, "\n".join(parts).encode())


STORE = script("store", _STORE_EVENT, _STORE)
DELIVERED = script("delivered", _STORE_EVENT, QUEUE_OUTBOUND, _DELIVERED)
RETRY = script("retry", _STORE_EVENT, _RETRY)
DEAD = script("dead", _STORE_EVENT, _DEAD)
REPLAY = script("replay", _STORE_EVENT, _DEAD_IDS, _REPLAY)
PURGE = script("purge", _STORE_EVENT, _DEAD_IDS, _PURGE)
DEAD_LETTERS = script("dead_letters", _DEAD_LETTERS)
DUE = script("due", _STORE_EVENT, _DUE)
NEXT_DUE = script("next_due", _NEXT_DUE)
RECOUNT = script("recount", _STORE_EVENT, _RECOUNT)
COUNTS = script("counts", _STORE_EVENT, _COUNTS)

ALL = (
    STORE,
    DELIVERED,
    RETRY,
    DEAD,
    REPLAY,
    PURGE,
    DEAD_LETTERS,
    DUE,
    NEXT_DUE,
    RECOUNT,
    COUNTS,
)
