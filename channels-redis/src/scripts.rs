//! Lua scripts, for what must be atomic in Redis: a send's capacity check when its queue was
//! found full, and a worker channel's restore.

use std::sync::LazyLock;

use redis::Script;

/// A send that found its queue past capacity after adding its payload: takes the payload out
/// again if the queue is still past capacity (whatever else was added or popped since).
/// KEYS[1] = queue; ARGV = capacity, payload. Returns 1 if the payload was removed (the
/// message is dropped, the queue was full), 0 if it stays (it fits now, or was popped).
///
/// Only this rare path hands a payload to Lua: Redis hashes every byte of a Lua string, which
/// for a group message naming hundreds of members costs more than the rest of the send.
pub(crate) static DROP_IF_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[1]) then
    return redis.call('ZREM', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Moves a receiver's in-flight backup back into the queue with its original scores, as
/// channels_redis's cleanup script does before each blocking pop on a normal channel.
/// KEYS[1] = queue, KEYS[2] = backup.
pub(crate) static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
",
    )
});

/// Reads a group's presence: removes the entries whose expiry (their score in the expiry set)
/// has passed, then returns the hash of entries and the members left in the expiry set.
/// KEYS[1] = entries (hash), KEYS[2] = expiries (sorted set); ARGV[1] = now, in milliseconds.
pub(crate) static PRESENCE_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for i = 1, #expired, 1000 do
    redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
end
if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
end
return {redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1)}
",
    )
});

/// Appends a message to a group's history (see `history.rs`). KEYS[1] = stream, KEYS[2] =
/// meta hash; ARGV = payload, size, window (ms), a new epoch for a missing hash, the hash's
/// time to live (ms). Returns `{epoch, offset}`.
pub(crate) static HISTORY_APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
{NEW_EPOCH}
end
{APPEND}
return {{epoch, offset}}"
    ))
});

/// [`HISTORY_APPEND`] once per key (see `history.rs`). KEYS[3] = the key's marker; ARGV as
/// [`HISTORY_APPEND`]. While the marker lives (a window) and the history's epoch is the one
/// it was written in, returns `{epoch, offset of the earlier message, 0}` and writes nothing;
/// else appends and returns `{epoch, offset, 1}`.
pub(crate) static HISTORY_APPEND_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch then
    local seen = redis.call('GET', KEYS[3])
    if seen then
        local at = string.find(seen, ':', 1, true)
        if at and string.sub(seen, at + 1) == epoch then
            return {{epoch, tonumber(string.sub(seen, 1, at - 1)), 0}}
        end
    end
else
{NEW_EPOCH}
end
{APPEND}
redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', ARGV[3])
return {{epoch, offset, 1}}"
    ))
});

/// The history scripts' start of a new epoch, when the meta hash is missing: the stream of an
/// older epoch goes.
const NEW_EPOCH: &str = "    epoch = ARGV[4]
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)";

/// The history scripts' append: the next offset, the message added, what is past the size or
/// the window trimmed, the keys' time to live renewed.
const APPEND: &str = "local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'o', offset, 'p', ARGV[1])
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', now - tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])";

/// Reads a group's history (see `history.rs`). KEYS[1] = stream, KEYS[2] = meta hash; ARGV =
/// window (ms), a new epoch for a missing hash, the hash's time to live (ms), the epoch asked
/// for. Trims what is older than the window, then returns `{epoch, offset, entries}`; the
/// entries only when the epoch asked for is the history's.
pub(crate) static HISTORY_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
    epoch = ARGV[2]
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', 0)
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local top = tonumber(redis.call('HGET', KEYS[2], 'offset'))
if epoch ~= ARGV[4] then
    return {epoch, top, {}}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', now - tonumber(ARGV[1])))
return {epoch, top, redis.call('XRANGE', KEYS[1], '-', '+')}
",
    )
});
