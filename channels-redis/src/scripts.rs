//! Lua scripts: each does its check-then-write atomically in Redis, so concurrent senders
//! (Rust or Python) cannot push a queue past its capacity.

use std::sync::LazyLock;

use redis::Script;

/// `send`: trim expired members, refuse when at capacity, add, refresh the key's TTL.
/// KEYS[1] = queue; ARGV = trim_before, capacity, score, payload, expiry. Returns 1 or 0 (full).
pub(crate) static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// `group_send` on one shard: the same as SEND for N queues, one payload each.
/// KEYS = N queues; ARGV = N payloads, N capacities, trim_before, score, expiry.
/// Returns a list of N flags: 1 queued, 0 full (dropped).
pub(crate) static GROUP_SEND: LazyLock<Script> = LazyLock::new(|| Script::new(GROUP_SEND_SOURCE));

/// The source of [`GROUP_SEND`]: a pipeline loads it first (`SCRIPT LOAD`), since a pipelined
/// `EVALSHA` is not retried when Redis lost its script cache.
pub(crate) const GROUP_SEND_SOURCE: &str = r"
local n = #KEYS
local trim_before = ARGV[2 * n + 1]
local score = ARGV[2 * n + 2]
local expiry = ARGV[2 * n + 3]
local queued = {}
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, trim_before)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], score, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
        queued[i] = 1
    else
        queued[i] = 0
    end
end
return queued
";

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
