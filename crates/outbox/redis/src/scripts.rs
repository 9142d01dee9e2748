//! The Lua scripts: every operation that touches more than one key runs as one
//! script, so it is atomic and cannot leave the bookkeeping half-done.
//!
//! # Key layout
//!
//! Every key is `{P}:<name>`, `P` being the configured prefix: the braces make `P`
//! the Redis Cluster hash tag, so all keys of one outbox live in one slot. Every
//! script receives **all** of them, in this order, as `KEYS` (see [`KEY_NAMES`])
//! and touches no other key, so the scripts also run on Redis Cluster.
//!
//! | # | key | type | content |
//! |---|---|---|---|
//! | 1 | `{P}:stream` | stream | entries handed out, one field `id` = notification id; consumer group `mesh-notify` |
//! | 2 | `{P}:delayed` | zset | id → due time (ms): pending entries not leased, due or not (parked ones with their give-up time) |
//! | 3 | `{P}:leases` | zset | id → lease deadline (ms, Redis server clock): claimed, not settled |
//! | 4 | `{P}:parked` | zset | id → give-up time: parked entries (for `stats`) |
//! | 5 | `{P}:parked:byid` | zset | id → 0: the same entries in id order = age (UUIDv7), for `unpark` |
//! | 6 | `{P}:n` | hash | id → notification JSON |
//! | 7 | `{P}:meta` | hash | id → bookkeeping JSON (below) |
//! | 8 | `{P}:dead` | zset | id → death sequence number |
//! | 9 | `{P}:deadseq` | string | counter for the death sequence |
//! | 10 | `{P}:dead:n` | hash | id → notification JSON of a dead letter |
//! | 11 | `{P}:dead:meta` | hash | id → bookkeeping JSON of a dead letter |
//!
//! A pending entry has a field in `{P}:n` and `{P}:meta` and is in exactly one of
//! `{P}:delayed` and `{P}:leases`; a parked entry is also in both parked sets.
//! Bookkeeping JSON fields (times in ms since the epoch, as decimal strings):
//! `due`, `enq` (enqueued at), `att` (attempts, a number), `err` (last error);
//! while claimed `tok` (lease token `<stream id>/<attempts>`, the stream id being
//! the entry in the worker's pending list) and `w` (worker); while parked `park`
//! (array of provider names). Dead letters add `reason` and `died`.
//!
//! "Now" (lease deadlines, due checks, enqueue and death times) is the Redis
//! server's clock (`TIME`), so workers on hosts with skewed clocks agree; due
//! times chosen by the caller (`enqueue`, `retry_at`, `park`) are taken as given.
//! Scripts call `redis.replicate_commands()` so that writing after `TIME` also
//! works on Redis 5 and 6 (from 7 on, effect replication is the only mode).

use redis::Script;

/// The key names after `{P}:`, in `KEYS` order (see the module doc).
pub(crate) const KEY_NAMES: [&str; 11] = [
    "stream",
    "delayed",
    "leases",
    "parked",
    "parked:byid",
    "n",
    "meta",
    "dead",
    "deadseq",
    "dead:n",
    "dead:meta",
];

/// Prepended to every script: names for `KEYS` and shared helpers.
const PRELUDE: &str = r"
local STREAM, DELAYED, LEASES, PARKED, PARKED_BYID = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local NOTES, META, DEAD, DEAD_SEQ, DEAD_NOTES, DEAD_META = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(x) return string.format('%d', x) end
local function get_meta(hash, id)
  local raw = redis.call('HGET', hash, id)
  if not raw then return nil end
  local ok, m = pcall(cjson.decode, raw)
  if ok and type(m) == 'table' then
    m.att = tonumber(m.att) or 0
    return m
  end
  return {att = 0, due = '0', enq = '0', err = 'unreadable outbox bookkeeping: ' .. raw}
end
local function put_meta(hash, id, m) redis.call('HSET', hash, id, cjson.encode(m)) end
local function park_json(m)
  if m.park then return cjson.encode(m.park) end
  return false
end
local function unpark_index(id)
  redis.call('ZREM', PARKED, id)
  redis.call('ZREM', PARKED_BYID, id)
end
-- Drops stream entry `sid` from the group's pending list and from the stream.
local function drop(group, sid)
  redis.call('XACK', STREAM, group, sid)
  redis.call('XDEL', STREAM, sid)
end
-- The bookkeeping of `id` if lease token `tok` is still its lease, else nil.
local function held(id, tok)
  local m = get_meta(META, id)
  if m and m.tok and m.tok == tok then return m end
  return nil
end
-- Ends the lease of `m` (held): the stream entry goes, `id` leaves the leases.
local function release(group, id, m)
  local sid = string.match(m.tok, '^(.*)/')
  if sid then drop(group, sid) end
  redis.call('ZREM', LEASES, id)
  m.tok = nil
  m.w = nil
end
";

/// ARGV: due, then (id, json) pairs. Returns how many were new.
const ENQUEUE: &str = r"
local now = ms(now_ms())
local added = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HSETNX', NOTES, id, ARGV[i + 1]) == 1 then
    put_meta(META, id, {due = ARGV[1], enq = now, att = 0})
    redis.call('ZADD', DELAYED, ARGV[1], id)
    added = added + 1
  end
end
return added
";

/// ARGV: group, worker, max, lease ms. Returns `{id, token, attempts, json, due,
/// enqueued, err}` per claim.
///
/// First takes over entries whose lease expired (XCLAIM moves the stream entry to
/// this worker's pending list). Then reads stream entries never delivered to
/// anyone (none normally: a safety net, so an entry added to the stream and not
/// read is never stranded), and only then moves the due entries it still needs
/// from the delayed set into the stream and reads them through the group.
const CLAIM: &str = r"
local group, worker = ARGV[1], ARGV[2]
local max, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local deadline = now + lease_ms
local out = {}
if redis.call('EXISTS', STREAM) == 0 then
  redis.call('XGROUP', 'CREATE', STREAM, group, '0', 'MKSTREAM')
end
local function grant(sid, id, m)
  m.att = m.att + 1
  m.tok = sid .. '/' .. ms(m.att)
  m.w = worker
  if m.park then
    m.park = nil
    unpark_index(id)
  end
  put_meta(META, id, m)
  redis.call('ZADD', LEASES, deadline, id)
  out[#out + 1] = {id, m.tok, m.att, redis.call('HGET', NOTES, id), m.due, m.enq, m.err or false}
end
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, max)
for _, id in ipairs(expired) do
  local m = get_meta(META, id)
  local sid = m and m.tok and string.match(m.tok, '^(.*)/')
  if not m then
    redis.call('ZREM', LEASES, id)
  elseif sid and #redis.call('XCLAIM', STREAM, group, worker, 0, sid) > 0 then
    grant(sid, id, m)
  else
    -- The stream entry is gone: the entry waits again for its due time.
    redis.call('ZREM', LEASES, id)
    m.tok, m.w = nil, nil
    put_meta(META, id, m)
    redis.call('ZADD', DELAYED, m.due, id)
  end
end
local function read(count)
  local got = 0
  local r = redis.call('XREADGROUP', 'GROUP', group, worker, 'COUNT', count, 'STREAMS', STREAM, '>')
  if not r then return 0 end
  for _, e in ipairs(r[1][2]) do
    got = got + 1
    local sid, fields = e[1], e[2]
    local id = fields[2]
    local m = id and get_meta(META, id)
    if m and not redis.call('ZSCORE', LEASES, id) and not redis.call('ZSCORE', DELAYED, id) then
      grant(sid, id, m)
    else
      -- Gone (cancelled, settled) or a duplicate of an entry waiting or leased.
      drop(group, sid)
    end
  end
  return got
end
-- Drain undelivered entries first (stale ones are dropped, so read again until
-- the stream has no more or the claim is full): the due entries moved below are
-- then exactly the ones the last read returns.
while max > #out do
  local want = max - #out
  if read(want) < want then break end
end
local need = max - #out
if need > 0 then
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, need)
  if #due > 0 then
    for _, id in ipairs(due) do
      redis.call('ZREM', DELAYED, id)
      redis.call('XADD', STREAM, '*', 'id', id)
    end
    read(#due)
  end
end
return out
";

/// ARGV: group, then (id, token) pairs. Returns one 1 (acked) or 0 (lease lost)
/// per pair.
const ACK: &str = r"
local group = ARGV[1]
local res = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local m = held(id, ARGV[i + 1])
  if m then
    release(group, id, m)
    redis.call('HDEL', NOTES, id)
    redis.call('HDEL', META, id)
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
return res
";

/// ARGV: group, id, token, when, why. 1 = done, 0 = lease lost.
const RETRY: &str = r"
local group, id = ARGV[1], ARGV[2]
local m = held(id, ARGV[3])
if not m then return 0 end
release(group, id, m)
m.due = ARGV[4]
m.err = ARGV[5]
put_meta(META, id, m)
redis.call('ZADD', DELAYED, ARGV[4], id)
return 1
";

/// ARGV: group, id, token, until, why, then the providers. 1 = done, 0 = lease
/// lost. The attempt of this claim is given back; the entry waits in the delayed
/// set until its give-up time unless `unpark` makes it due sooner.
const PARK: &str = r"
local group, id = ARGV[1], ARGV[2]
local m = held(id, ARGV[3])
if not m then return 0 end
release(group, id, m)
if m.att > 0 then m.att = m.att - 1 end
m.due = ARGV[4]
m.err = ARGV[5]
m.park = nil
if #ARGV > 5 then
  local providers = {}
  for i = 6, #ARGV do providers[#providers + 1] = ARGV[i] end
  m.park = providers
  redis.call('ZADD', PARKED, ARGV[4], id)
  redis.call('ZADD', PARKED_BYID, 0, id)
end
put_meta(META, id, m)
redis.call('ZADD', DELAYED, ARGV[4], id)
return 1
";

/// ARGV: limit, then optionally the provider (absent: any). Makes up to `limit`
/// parked entries waiting for it due now, in id order (oldest first); returns how
/// many.
const UNPARK: &str = r"
local limit, want = tonumber(ARGV[1]), ARGV[2]
local now = now_ms()
local woke, from = 0, '-'
local function waits_for(m)
  if not want then return true end
  for _, p in ipairs(m.park) do
    if p == want then return true end
  end
  return false
end
while woke < limit do
  local ids = redis.call('ZRANGEBYLEX', PARKED_BYID, from, '+', 'LIMIT', 0, 256)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if woke >= limit then break end
    from = '(' .. id
    local m = get_meta(META, id)
    if not m or type(m.park) ~= 'table' or m.tok then
      -- Stale index entry: not (or no longer) parked.
      unpark_index(id)
    elseif waits_for(m) then
      m.park = nil
      m.due = ms(now)
      put_meta(META, id, m)
      redis.call('ZADD', DELAYED, now, id)
      unpark_index(id)
      woke = woke + 1
    end
  end
end
return woke
";

/// ARGV: id, token, lease ms. 1 = extended, 0 = lease lost.
const RENEW: &str = r"
local id = ARGV[1]
if not held(id, ARGV[2]) then return 0 end
redis.call('ZADD', LEASES, now_ms() + tonumber(ARGV[3]), id)
return 1
";

/// ARGV: group, id, token, why. 1 = done, 0 = lease lost.
const DEAD_LETTER: &str = r"
local group, id = ARGV[1], ARGV[2]
local m = held(id, ARGV[3])
if not m then return 0 end
release(group, id, m)
m.park = nil
unpark_index(id)
m.reason = ARGV[4]
m.died = ms(now_ms())
local json = redis.call('HGET', NOTES, id)
if json then redis.call('HSET', DEAD_NOTES, id, json) else redis.call('HDEL', DEAD_NOTES, id) end
put_meta(DEAD_META, id, m)
redis.call('HDEL', NOTES, id)
redis.call('HDEL', META, id)
redis.call('ZADD', DEAD, redis.call('INCR', DEAD_SEQ), id)
return 1
";

/// ARGV: group, id. 1 = removed, 0 = not pending.
const CANCEL: &str = r"
local group, id = ARGV[1], ARGV[2]
if redis.call('HEXISTS', NOTES, id) == 0 and redis.call('HEXISTS', META, id) == 0 then return 0 end
local m = get_meta(META, id)
if m and m.tok then
  local sid = string.match(m.tok, '^(.*)/')
  if sid then drop(group, sid) end
end
redis.call('HDEL', NOTES, id)
redis.call('HDEL', META, id)
redis.call('ZREM', DELAYED, id)
redis.call('ZREM', LEASES, id)
unpark_index(id)
return 1
";

/// Returns {pending, in_flight, due, dead, oldest due (ms, -1 if none), parked,
/// now (server clock)}.
const STATS: &str = r"
local now = now_ms()
local pending = redis.call('ZCARD', DELAYED) + redis.call('ZCARD', LEASES)
local in_flight = redis.call('ZCOUNT', LEASES, '(' .. ms(now), '+inf')
local due = redis.call('ZCOUNT', DELAYED, '-inf', now)
local parked = redis.call('ZCOUNT', PARKED, '(' .. ms(now), '+inf')
local oldest = -1
local first = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if #first > 0 then oldest = tonumber(first[2]) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now)) do
  local m = get_meta(META, id)
  if m then
    due = due + 1
    local d = tonumber(m.due) or now
    if oldest < 0 or d < oldest then oldest = d end
  end
end
return {pending, in_flight, due, redis.call('ZCARD', DEAD), oldest, parked, now}
";

/// ARGV: limit. Returns {id, json, due, enq, att, err, park} (park: JSON array or
/// nil), soonest due first (the waiting entries merged with the claimed ones,
/// which are few).
const PENDING: &str = r"
local limit = tonumber(ARGV[1])
local rows = {}
local function add(id)
  local m = get_meta(META, id)
  if m then
    rows[#rows + 1] = {id, redis.call('HGET', NOTES, id), m.due, m.enq, m.att, m.err or false, park_json(m)}
  end
end
for _, id in ipairs(redis.call('ZRANGE', DELAYED, 0, limit - 1)) do add(id) end
for _, id in ipairs(redis.call('ZRANGE', LEASES, 0, -1)) do add(id) end
table.sort(rows, function(a, b)
  local da, db = tonumber(a[3]) or 0, tonumber(b[3]) or 0
  if da ~= db then return da < db end
  return a[1] < b[1]
end)
local out = {}
for i = 1, math.min(limit, #rows) do out[i] = rows[i] end
return out
";

/// ARGV: limit. Returns {id, json, due, enq, att, err, reason, died}, most recent
/// first.
const DEAD_LIST: &str = r"
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)) do
  local m = get_meta(DEAD_META, id)
  if m then
    out[#out + 1] = {id, redis.call('HGET', DEAD_NOTES, id), m.due, m.enq, m.att, m.err or false,
      m.reason or '', m.died or '0'}
  end
end
return out
";

/// ARGV: id. 1 = requeued (or already pending again: the dead letter is dropped),
/// 0 = no such dead letter.
const REQUEUE: &str = r"
local id = ARGV[1]
if redis.call('ZREM', DEAD, id) == 0 then return 0 end
local json = redis.call('HGET', DEAD_NOTES, id)
local m = get_meta(DEAD_META, id)
redis.call('HDEL', DEAD_NOTES, id)
redis.call('HDEL', DEAD_META, id)
if redis.call('HEXISTS', NOTES, id) == 1 or not json or not m then return 1 end
local now = now_ms()
m.reason, m.died, m.park, m.tok, m.w = nil, nil, nil, nil, nil
m.att = 0
m.due = ms(now)
redis.call('HSET', NOTES, id, json)
put_meta(META, id, m)
redis.call('ZADD', DELAYED, now, id)
return 1
";

/// ARGV: chunk. Deletes up to `chunk` dead letters; returns how many.
const PURGE: &str = r"
local ids = redis.call('ZRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)
if #ids > 0 then
  redis.call('HDEL', DEAD_NOTES, unpack(ids))
  redis.call('HDEL', DEAD_META, unpack(ids))
  redis.call('ZREM', DEAD, unpack(ids))
end
return #ids
";

/// The loaded scripts (hashed once).
pub(crate) struct Scripts {
    pub enqueue: Script,
    pub claim: Script,
    pub ack: Script,
    pub retry: Script,
    pub park: Script,
    pub unpark: Script,
    pub renew: Script,
    pub dead_letter: Script,
    pub cancel: Script,
    pub stats: Script,
    pub pending: Script,
    pub dead: Script,
    pub requeue: Script,
    pub purge: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            enqueue: script(ENQUEUE),
            claim: script(CLAIM),
            ack: script(ACK),
            retry: script(RETRY),
            park: script(PARK),
            unpark: script(UNPARK),
            renew: script(RENEW),
            dead_letter: script(DEAD_LETTER),
            cancel: script(CANCEL),
            stats: script(STATS),
            pending: script(PENDING),
            dead: script(DEAD_LIST),
            requeue: script(REQUEUE),
            purge: script(PURGE),
        }
    }
}
