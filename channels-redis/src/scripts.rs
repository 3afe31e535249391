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
