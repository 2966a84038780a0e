"""
The Lua scripts of the Redis spool's reassembly: segments waiting in a hash
per message (``seg:<sha1 of the message key>``), a completed marker
(``done:...``) that recognises a segment offered again after its message
completed, and the counts behind the reassembly limits.  As in
`p2a_connector.redis_scripts`, each change is one script.

A segment is added by `ADD_SEGMENT`.  Given with an event assembled from
it and siblings the caller sent itself, it also stores the event, if the
message holds exactly those siblings.  Else it replies the records of a
message its segment completes without changing anything; Python assembles
the event and `FINISH` closes the reassembly and stores the event, unless
another instance did first.  Both take a batch: the calls of one reactor
turn.
"""

from __future__ import annotations

from p2a_connector.redis_scripts import STORE_EVENT, script

# Whether the message a segment completes holds exactly the siblings the
# caller assembled it from, so their event can be stored at once: ARGV from
# first gives their count, then seqnum and nonce of each.  Every segment
# added keeps its nonce beside its record; a sibling added by another
# instance, or another copy of it, has another nonce.  Returns the
# reassembly's token ('' for a message with no segment held), or nil.
_ASSEMBLED_FROM = """
local function assembled_from(seg, present, webhook, first)
  local count = tonumber(ARGV[first])
  if count ~= present then return nil end
  if count == 0 then return '' end
  local names = {'webhook', 'token'}
  for j = 1, count do names[j + 2] = 'n:' .. ARGV[first + 2 * j - 1] end
  local kept = redis.call('HMGET', seg, unpack(names))
  if kept[1] ~= webhook then return nil end
  for j = 1, count do
    if kept[j + 2] ~= ARGV[first + 2 * j] then return nil end
  end
  return kept[2]
end
"""

# Adds one segment to its reassembly: seg and done are its segments hash and
# completed marker; max_* are -1 for no bound; nonce names this copy of the
# segment, and is the token of a reassembly it opens.  assembled, when not
# nil, is the index in ARGV of an event the caller assembled from this
# segment and the siblings it holds itself (see assembled_from; then the
# completed marker's ttl and the event's fifteen arguments).  Returns held /
# ignored / limit (with the bound's name) / stored or duplicate (the given
# event, with its conversation) / complete (with the token, webhook and
# every record in seqnum order); complete writes nothing.
_ADD_SEGMENT_ONE = """
local function add_segment(prefix, group, seg, done, seqnum, total, record,
    webhook, received_at, operator, key, max_reassemblies, max_per_operator,
    max_bytes, nonce, assembled)
  local counts = prefix .. 'counts'
  local field = 's:' .. seqnum
  if redis.call('EXISTS', done) == 1 then
    return 'ignored', {}
  end
  -- A reassembly's hash always holds 'present': without it, this segment
  -- opens one.
  local present, size_held, kept = unpack(redis.call('HMGET', seg, 'present',
    'size', field))
  if kept then
    return 'ignored', {}
  end

  local opened = not present
  present = tonumber(present or '0')
  if present + 1 >= tonumber(total) then
    if assembled then
      local token = assembled_from(seg, present, webhook, assembled)
      if token then
        local siblings = tonumber(ARGV[assembled])
        local at = assembled + 2 * siblings + 1
        return finish(prefix, group, seg, done, token, ARGV[at], 'complete', at + 1)
      end
    end
    local records = {{tonumber(seqnum), record}}
    local kept_token, kept_webhook = '', webhook
    if not opened then
      local fields = redis.call('HGETALL', seg)
      for i = 1, #fields, 2 do
        local name = fields[i]
        if string.sub(name, 1, 2) == 's:' then
          records[#records + 1] = {tonumber(string.sub(name, 3)), fields[i + 1]}
        elseif name == 'token' then
          kept_token = fields[i + 1]
        elseif name == 'webhook' then
          kept_webhook = fields[i + 1]
        end
      end
    end
    table.sort(records, function(a, b) return a[1] < b[1] end)
    local extra = {kept_token, kept_webhook}
    for _, r in ipairs(records) do extra[#extra + 1] = r[2] end
    return 'complete', extra
  end

  local size = string.len(record)
  local operator_field = 'op:' .. operator
  local of_operator, count, held = unpack(redis.call('HMGET', counts,
    operator_field, 'count', 'bytes'))
  of_operator, count, held = tonumber(of_operator or '0'), tonumber(count or '0'),
    tonumber(held or '0')
  if opened then
    if tonumber(max_per_operator) >= 0 and of_operator + 1 > tonumber(max_per_operator) then
      return 'limit', {'max_reassemblies_per_operator'}
    end
    if tonumber(max_reassemblies) >= 0 and count + 1 > tonumber(max_reassemblies) then
      return 'limit', {'max_reassemblies'}
    end
  end
  if tonumber(max_bytes) >= 0 and held + size > tonumber(max_bytes) then
    return 'limit', {'max_reassembly_bytes'}
  end

  if opened then
    redis.call('HSET', seg, 'token', nonce, 'webhook', webhook,
      'operator', operator, 'key', key, 'present', '1', 'size', size,
      field, record, 'n:' .. seqnum, nonce)
    redis.call('HSET', counts, 'count', count + 1, operator_field, of_operator + 1,
      'bytes', held + size)
  else
    redis.call('HSET', seg, field, record, 'n:' .. seqnum, nonce,
      'present', present + 1, 'size', tonumber(size_held or '0') + size)
    redis.call('HSET', counts, 'bytes', held + size)
  end
  redis.call('ZADD', prefix .. 'open', 'LT', received_at, seg)
  return 'held', {}
end
"""

# Adds the segments of a batch, in order, so a batch holding two segments
# of one message completes it.  KEYS: per segment its segments hash and
# completed marker.  ARGV: prefix, group, max_reassemblies,
# max_per_operator, max_bytes (-1: none), then per segment: seqnum, total,
# record, webhook, received_at, operator, key, nonce and the number of
# siblings an event given with it was assembled from, -1 for none; when
# one is given, each sibling's seqnum and nonce, the completed marker's ttl
# and the event's fifteen arguments follow.  Its extra is one JSON array
# with [status, extra] per segment (see add_segment).
_ADD_SEGMENT = """
local prefix, group = ARGV[1], ARGV[2]
local out, k, i = {}, 1, 6
while i <= #ARGV do
  local siblings, assembled = tonumber(ARGV[i + 8]), nil
  if siblings >= 0 then assembled = i + 8 end
  local status, extra = add_segment(prefix, group, KEYS[k], KEYS[k + 1],
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
    ARGV[i + 6], ARGV[3], ARGV[4], ARGV[5], ARGV[i + 7], assembled)
  out[#out + 1] = {status, extra}
  k = k + 2
  i = i + 9
  if assembled then i = i + 2 * siblings + 16 end
end
return counted(prefix, 'done', {cjson.encode(out)})
"""

# Closes the reassembly the token names and stores its event: seg and done
# are its segments hash and completed marker, ttl the marker's life in ms
# (0: no marker), mode complete or expire, first the index in ARGV of the
# event's fifteen arguments (see store_event and context).  Returns stored
# or duplicate with the conversation JSON, or ignored (another instance
# completed it) or stale (it changed since read).
_FINISH_ONE = """
local function finish(prefix, group, seg, done, token, ttl, mode, first)
  local counts = prefix .. 'counts'
  if mode == 'complete' and redis.call('EXISTS', done) == 1 then
    return 'ignored', ''
  end
  local kept, operator, size = unpack(redis.call('HMGET', seg, 'token', 'operator',
    'size'))
  kept = kept or ''
  if kept ~= token then
    return 'stale', ''
  end

  if kept ~= '' then
    redis.call('DEL', seg)
    redis.call('ZREM', prefix .. 'open', seg)
    redis.call('HINCRBY', counts, 'count', -1)
    redis.call('HINCRBY', counts, 'bytes', -tonumber(size))
    if redis.call('HINCRBY', counts, 'op:' .. operator, -1) <= 0 then
      redis.call('HDEL', counts, 'op:' .. operator)
    end
  end
  if tonumber(ttl) > 0 then
    redis.call('SET', done, '1', 'PX', ttl)
  end
  local i = first
  local added, conversation = store_event(prefix, group, ARGV[i], ARGV[i + 1],
    ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7],
    context(i + 8))
  return added == 1 and 'stored' or 'duplicate', conversation
end
"""

# Finishes the reassemblies of a batch.  KEYS: per reassembly its segments
# hash and completed marker.  ARGV: prefix, group, then eighteen per
# reassembly: token, ttl, mode and the event's fifteen.  Its extra is one
# JSON array with [status, conversation] per reassembly (see finish).
_FINISH = """
local prefix, group = ARGV[1], ARGV[2]
local out, k = {}, 1
for i = 3, #ARGV, 18 do
  local status, conversation = finish(prefix, group, KEYS[k], KEYS[k + 1],
    ARGV[i], ARGV[i + 1], ARGV[i + 2], i + 3)
  out[#out + 1] = {status, conversation}
  k = k + 2
end
return counted(prefix, 'done', {cjson.encode(out)})
"""

# KEYS: the reassembly's segments hash.  Replies its token, then its records.
_READ_SEGMENTS = """
local fields = redis.call('HGETALL', KEYS[1])
local records, token = {}, nil
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 's:' then
    records[#records + 1] = {tonumber(string.sub(fields[i], 3)), fields[i + 1]}
  elseif fields[i] == 'token' then
    token = fields[i + 1]
  end
end
if not token then return {} end
table.sort(records, function(a, b) return a[1] < b[1] end)
local out = {token}
for _, record in ipairs(records) do out[#out + 1] = record[2] end
return out
"""


ADD_SEGMENT = script(
    "add_segment",
    STORE_EVENT,
    _FINISH_ONE,
    _ASSEMBLED_FROM,
    _ADD_SEGMENT_ONE,
    _ADD_SEGMENT,
)
FINISH = script("finish", STORE_EVENT, _FINISH_ONE, _FINISH)
READ_SEGMENTS = script("read_segments", _READ_SEGMENTS)

ALL = (ADD_SEGMENT, FINISH, READ_SEGMENTS)
