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

# What the scripts of a batch read and change of the reassembly state (the
# segments hashes, completed markers, counts and the set of open
# reassemblies) is kept in Lua, each key read once and written once, by
# counted() at the end: a message opened and completed in one batch, as
# most are, then writes only its completed marker.  Nothing else runs
# while a script does, so no other client can tell.
_WRITE_BACK = """
local tally, tally_was, opened_at, segs, dones = nil, {}, {}, {}, {}

-- The counts hash as a table of numbers.
local function tally_of(prefix)
  if not tally then
    tally = {}
    local flat = redis.call('HGETALL', prefix .. 'counts')
    for i = 1, #flat, 2 do
      tally[flat[i]] = tonumber(flat[i + 1])
      tally_was[flat[i]] = tally[flat[i]]
    end
  end
  return tally
end

-- A segments hash as a table: its fields, whether Redis holds it, the
-- fields changed since and whether it was deleted.
local function seg_of(seg)
  local held = segs[seg]
  if not held then
    local flat = redis.call('HGETALL', seg)
    held = {fields = {}, stored = #flat > 0, changed = {}, deleted = false}
    for i = 1, #flat, 2 do held.fields[flat[i]] = flat[i + 1] end
    segs[seg] = held
  end
  return held
end

local function seg_set(held, ...)
  local values = {...}
  for i = 1, #values, 2 do
    held.fields[values[i]] = values[i + 1]
    held.changed[values[i]] = true
  end
end

local function seg_delete(held)
  held.fields, held.changed, held.deleted = {}, {}, true
end

local function is_done(done)
  if dones[done] == nil then
    dones[done] = redis.call('EXISTS', done) == 1
  end
  return dones[done]
end

-- A reassembly's first segment arrived at received_at (the earliest wins).
local function note_open(seg, received_at)
  local at = opened_at[seg]
  if not at or tonumber(received_at) < tonumber(at) then
    opened_at[seg] = received_at
  end
end

-- The reassembly in held closed: a hash Redis held before this script is
-- in the open set already.
local function forget_open(prefix, seg, held)
  opened_at[seg] = nil
  if held.stored then
    redis.call('ZREM', prefix .. 'open', seg)
  end
end

-- Counts at zero for an operator are removed, not kept.
flush_writes = function(prefix)
  for seg, held in pairs(segs) do
    if held.deleted and held.stored then
      redis.call('DEL', seg)
    end
    local set = {}
    for name in pairs(held.changed) do
      set[#set + 1] = name
      set[#set + 1] = held.fields[name]
    end
    if #set > 0 then redis.call('HSET', seg, unpack(set)) end
  end
  segs = {}
  dones = {}
  for seg, at in pairs(opened_at) do
    redis.call('ZADD', prefix .. 'open', 'LT', at, seg)
  end
  opened_at = {}
  if not tally then return end
  local set, gone = {}, {}
  for field, value in pairs(tally) do
    if value ~= (tally_was[field] or 0) then
      if string.sub(field, 1, 3) == 'op:' and value <= 0 then
        gone[#gone + 1] = field
      else
        set[#set + 1] = field
        set[#set + 1] = string.format('%d', value)
      end
    end
  end
  if #set > 0 then redis.call('HSET', prefix .. 'counts', unpack(set)) end
  if #gone > 0 then redis.call('HDEL', prefix .. 'counts', unpack(gone)) end
  tally, tally_was = nil, {}
end
"""

# Whether the message a segment completes holds exactly the siblings the
# caller assembled it from, so their event can be stored at once: ARGV from
# first gives their count, then seqnum and nonce of each.  Every segment
# added keeps its nonce beside its record; a sibling added by another
# instance, or another copy of it, has another nonce.  Returns the
# reassembly's token ('' for a message with no segment held), or nil.
_ASSEMBLED_FROM = """
local function assembled_from(held, present, webhook, first)
  local count = tonumber(ARGV[first])
  if count ~= present then return nil end
  if count == 0 then return '' end
  if held.fields.webhook ~= webhook then return nil end
  for j = 1, count do
    if held.fields['n:' .. ARGV[first + 2 * j - 1]] ~= ARGV[first + 2 * j] then
      return nil
    end
  end
  return held.fields.token
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
  local field = 's:' .. seqnum
  if is_done(done) then
    return 'ignored', {}
  end
  -- A reassembly's hash always holds 'present': without it, this segment
  -- opens one.
  local held = seg_of(seg)
  if held.fields[field] then
    return 'ignored', {}
  end

  local opened = not held.fields.present
  local present = tonumber(held.fields.present or '0')
  if present + 1 >= tonumber(total) then
    if assembled then
      local token = assembled_from(held, present, webhook, assembled)
      if token then
        local siblings = tonumber(ARGV[assembled])
        local at = assembled + 2 * siblings + 1
        return finish(prefix, group, seg, done, token, ARGV[at], 'complete', at + 1)
      end
    end
    local records = {{tonumber(seqnum), record}}
    for name, value in pairs(held.fields) do
      if string.sub(name, 1, 2) == 's:' then
        records[#records + 1] = {tonumber(string.sub(name, 3)), value}
      end
    end
    table.sort(records, function(a, b) return a[1] < b[1] end)
    local extra = {held.fields.token or '', held.fields.webhook or webhook}
    for _, r in ipairs(records) do extra[#extra + 1] = r[2] end
    return 'complete', extra
  end

  local size = string.len(record)
  local operator_field = 'op:' .. operator
  local t = tally_of(prefix)
  local of_operator, count, bytes = t[operator_field] or 0, t.count or 0, t.bytes or 0
  if opened then
    if tonumber(max_per_operator) >= 0 and of_operator + 1 > tonumber(max_per_operator) then
      return 'limit', {'max_reassemblies_per_operator'}
    end
    if tonumber(max_reassemblies) >= 0 and count + 1 > tonumber(max_reassemblies) then
      return 'limit', {'max_reassemblies'}
    end
  end
  if tonumber(max_bytes) >= 0 and bytes + size > tonumber(max_bytes) then
    return 'limit', {'max_reassembly_bytes'}
  end

  if opened then
    seg_set(held, 'token', nonce, 'webhook', webhook, 'operator', operator,
      'key', key, 'present', '1', 'size', tostring(size))
    t.count, t[operator_field] = count + 1, of_operator + 1
  else
    seg_set(held, 'present', tostring(present + 1),
      'size', tostring(tonumber(held.fields.size or '0') + size))
  end
  seg_set(held, field, record, 'n:' .. seqnum, nonce)
  t.bytes = bytes + size
  note_open(seg, received_at)
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
  if mode == 'complete' and is_done(done) then
    return 'ignored', ''
  end
  local held = seg_of(seg)
  local kept = held.fields.token or ''
  if kept ~= token then
    return 'stale', ''
  end

  if kept ~= '' then
    local operator, size = held.fields.operator, tonumber(held.fields.size)
    seg_delete(held)
    forget_open(prefix, seg, held)
    local t, operator_field = tally_of(prefix), 'op:' .. operator
    t.count = (t.count or 0) - 1
    t.bytes = (t.bytes or 0) - size
    t[operator_field] = (t[operator_field] or 0) - 1
  end
  if tonumber(ttl) > 0 then
    redis.call('SET', done, '1', 'PX', ttl)
    dones[done] = true
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

# KEYS: the reassembly's segments hash; ARGV: prefix.  Replies its token,
# then its records; nothing for a hash that is gone, whose member of the
# open set is then removed (no reassembly is left to expire).
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
if not token then
  redis.call('ZREM', ARGV[1] .. 'open', KEYS[1])
  return {}
end
table.sort(records, function(a, b) return a[1] < b[1] end)
local out = {token}
for _, record in ipairs(records) do out[#out + 1] = record[2] end
return out
"""


ADD_SEGMENT = script(
    "add_segment",
    STORE_EVENT,
    _WRITE_BACK,
    _FINISH_ONE,
    _ASSEMBLED_FROM,
    _ADD_SEGMENT_ONE,
    _ADD_SEGMENT,
)
FINISH = script("finish", STORE_EVENT, _WRITE_BACK, _FINISH_ONE, _FINISH)
READ_SEGMENTS = script("read_segments", _READ_SEGMENTS)

ALL = (ADD_SEGMENT, FINISH, READ_SEGMENTS)
