//! The Lua scripts: every operation that touches more than one key runs as one
//! script, so it is atomic and cannot leave the bookkeeping half-done.
//!
//! Keys under the prefix `P` (see `Keys`): `P:stream` (the stream, consumer group
//! `mesh-notify`), `P:delayed` (zset id → due time: entries waiting, not yet handed
//! to the stream), `P:leases` (zset id → lease deadline: entries claimed and not
//! settled; every pending entry is in exactly one of these two sets), `P:e:<id>` (hash: the entry), `P:dead` (zset id → death sequence),
//! `P:d:<id>` (hash: a dead letter), `P:deadseq` (counter).
//!
//! Entry hash fields: `n` notification JSON, `due`, `enq` (ms), `att` attempts,
//! `err` last error; while claimed also `sid` (stream entry id), `tok` (lease
//! token `<sid>/<attempts>`), `w` worker, `until`, `at` (ms). Dead letters add
//! `reason` and `died`.

use redis::Script;

/// KEYS: delayed. ARGV: entry key prefix, due, now, then (id, json) pairs.
/// Returns how many were new.
const ENQUEUE: &str = r"
local added = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local k = ARGV[1] .. id
  if redis.call('HSETNX', k, 'n', ARGV[i + 1]) == 1 then
    redis.call('HSET', k, 'due', ARGV[2], 'enq', ARGV[3], 'att', 0)
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    added = added + 1
  end
end
return added
";

/// KEYS: stream, delayed, leases. ARGV: group, worker, max, lease ms, now, entry
/// key prefix. Returns `{id, token, attempts, json, due, enqueued, err}` per claim.
///
/// First takes over entries whose lease expired (XCLAIM moves the stream entry to
/// this worker's pending list), then moves due entries from the delayed set into
/// the stream and reads them through the consumer group.
const CLAIM: &str = r"
local stream, delayed, leases = KEYS[1], KEYS[2], KEYS[3]
local group, worker, ep = ARGV[1], ARGV[2], ARGV[6]
local max, lease_ms, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local function grant(sid, id)
  local k = ep .. id
  local att = redis.call('HINCRBY', k, 'att', 1)
  local tok = sid .. '/' .. att
  local lease_until = now + lease_ms
  redis.call('HSET', k, 'sid', sid, 'tok', tok, 'w', worker, 'until', lease_until, 'at', now)
  redis.call('ZADD', leases, lease_until, id)
  local f = redis.call('HMGET', k, 'n', 'due', 'enq', 'err')
  out[#out + 1] = {id, tok, att, f[1], f[2], f[3], f[4]}
end
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, max)
for _, id in ipairs(expired) do
  local sid = redis.call('HGET', ep .. id, 'sid')
  if sid then
    redis.call('XCLAIM', stream, group, worker, 0, sid)
    grant(sid, id)
  else
    redis.call('ZREM', leases, id)
  end
end
local need = max - #out
if need > 0 then
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, need)
  if #due > 0 then
    for _, id in ipairs(due) do
      redis.call('ZREM', delayed, id)
      redis.call('XADD', stream, '*', 'id', id)
    end
    local read = redis.call('XREADGROUP', 'GROUP', group, worker, 'COUNT', #due, 'STREAMS', stream, '>')
    if read then
      for _, m in ipairs(read[1][2]) do
        local sid, id = m[1], m[2][2]
        if redis.call('EXISTS', ep .. id) == 1 then
          grant(sid, id)
        else
          redis.call('XACK', stream, group, sid)
          redis.call('XDEL', stream, sid)
        end
      end
    end
  end
end
return out
";

/// KEYS: stream, leases, entry. ARGV: group, id, token. 1 = acked, 0 = lease lost.
const ACK: &str = r"
local k = KEYS[3]
if redis.call('HGET', k, 'tok') ~= ARGV[3] then return 0 end
local sid = redis.call('HGET', k, 'sid')
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('DEL', k)
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

/// KEYS: stream, delayed, leases, entry. ARGV: group, id, token, when, why.
const RETRY: &str = r"
local k = KEYS[4]
if redis.call('HGET', k, 'tok') ~= ARGV[3] then return 0 end
local sid = redis.call('HGET', k, 'sid')
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('HDEL', k, 'sid', 'tok', 'w', 'until', 'at')
redis.call('HSET', k, 'due', ARGV[4], 'err', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
";

/// KEYS: stream, leases, entry, dead entry, dead, deadseq.
/// ARGV: group, id, token, why, now.
const DEAD_LETTER: &str = r"
local k, dk = KEYS[3], KEYS[4]
if redis.call('HGET', k, 'tok') ~= ARGV[3] then return 0 end
local sid = redis.call('HGET', k, 'sid')
redis.call('XACK', KEYS[1], ARGV[1], sid)
redis.call('XDEL', KEYS[1], sid)
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', k, 'sid', 'tok', 'w', 'until', 'at')
redis.call('DEL', dk)
redis.call('RENAME', k, dk)
redis.call('HSET', dk, 'reason', ARGV[4], 'died', ARGV[5])
redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[2])
return 1
";

/// KEYS: stream, delayed, leases, entry. ARGV: group, id.
const CANCEL: &str = r"
local k = KEYS[4]
if redis.call('EXISTS', k) == 0 then return 0 end
local sid = redis.call('HGET', k, 'sid')
if sid then
  redis.call('XACK', KEYS[1], ARGV[1], sid)
  redis.call('XDEL', KEYS[1], sid)
end
redis.call('DEL', k)
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
";

/// KEYS: delayed, leases, dead. ARGV: now, entry key prefix.
/// Returns {pending, in_flight, due, dead, oldest due (ms, -1 if none)}.
const STATS: &str = r"
local now = ARGV[1]
local pending = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local in_flight = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local due = redis.call('ZCOUNT', KEYS[1], '-inf', now)
local oldest = -1
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if #first > 0 then oldest = tonumber(first[2]) end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do
  local d = redis.call('HGET', ARGV[2] .. id, 'due')
  if d then
    due = due + 1
    d = tonumber(d)
    if oldest < 0 or d < oldest then oldest = d end
  end
end
return {pending, in_flight, due, redis.call('ZCARD', KEYS[3]), oldest}
";

/// KEYS: delayed, leases. ARGV: entry key prefix, limit.
/// Returns {id, json, due, enq, att, err}, soonest due first (the waiting entries
/// merged with the claimed ones, which are few).
const PENDING: &str = r"
local limit = tonumber(ARGV[2])
local rows = {}
local function add(id)
  local f = redis.call('HMGET', ARGV[1] .. id, 'n', 'due', 'enq', 'att', 'err')
  if f[1] then rows[#rows + 1] = {id, f[1], f[2], f[3], f[4], f[5]} end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, limit - 1)) do add(id) end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do add(id) end
table.sort(rows, function(a, b)
  local da, db = tonumber(a[3]), tonumber(b[3])
  if da ~= db then return da < db end
  return a[1] < b[1]
end)
local out = {}
for i = 1, math.min(limit, #rows) do out[i] = rows[i] end
return out
";

/// KEYS: dead. ARGV: dead key prefix, limit. Returns {id, json, due, enq, att, err, reason, died}.
const DEAD: &str = r"
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'n', 'due', 'enq', 'att', 'err', 'reason', 'died')
  if f[1] then out[#out + 1] = {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7]} end
end
return out
";

/// KEYS: delayed, dead, dead entry, entry. ARGV: id, now.
const REQUEUE: &str = r"
local dk, k = KEYS[3], KEYS[4]
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', k) == 1 then
  redis.call('DEL', dk)
  return 1
end
redis.call('RENAME', dk, k)
redis.call('HDEL', k, 'reason', 'died')
redis.call('HSET', k, 'due', ARGV[2], 'att', 0)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
";

/// KEYS: dead. ARGV: dead key prefix, chunk. Deletes up to `chunk`; returns how many.
const PURGE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
";

/// The loaded scripts (hashed once).
pub(crate) struct Scripts {
    pub enqueue: Script,
    pub claim: Script,
    pub ack: Script,
    pub retry: Script,
    pub dead_letter: Script,
    pub cancel: Script,
    pub stats: Script,
    pub pending: Script,
    pub dead: Script,
    pub requeue: Script,
    pub purge: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            enqueue: Script::new(ENQUEUE),
            claim: Script::new(CLAIM),
            ack: Script::new(ACK),
            retry: Script::new(RETRY),
            dead_letter: Script::new(DEAD_LETTER),
            cancel: Script::new(CANCEL),
            stats: Script::new(STATS),
            pending: Script::new(PENDING),
            dead: Script::new(DEAD),
            requeue: Script::new(REQUEUE),
            purge: Script::new(PURGE),
        }
    }
}
