"""A Python peer on the Redis channel layer: real Django Channels + channels_redis.

usage: channels_redis_peer.py HOSTS PREFIX MODE ARGS...
  HOSTS   comma-separated redis:// URLs (shards, in order)
  modes:
    group_send GROUP JSON        group_send a message
    send CHANNEL JSON            send a message to a channel
    listen GROUP COUNT           new_channel + group_add, print {"channel": ...}, then COUNT messages
    worker CHANNEL COUNT         receive COUNT messages on a normal (worker) channel
Messages are JSON on the command line and on stdout; bytes are {"__bytes__": "<hex>"}.
Every wait is bounded; the script prints {"done": true} at the end.
Environment: CHANNELS_KEYS=k1,k2 sets symmetric_encryption_keys; CHANNELS_PUBSUB=1 uses
channels_redis's RedisPubSubChannelLayer instead of RedisChannelLayer; CHANNELS_HOSTS_JSON,
when set, is the `hosts` list as JSON (dicts such as {"address": "rediss://...",
"ssl_ca_certs": PATH} or {"sentinels": [[HOST, PORT]], "master_name": NAME}) and HOSTS is
ignored.
"""

import asyncio
import json
import os
import sys

from django.conf import settings

settings.configure()

from channels_redis.core import RedisChannelLayer  # noqa: E402
from channels_redis.pubsub import RedisPubSubChannelLayer  # noqa: E402


def to_json(value):
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return bytes.fromhex(value["__bytes__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def emit(value):
    print(json.dumps(value), flush=True)


async def main():
    hosts, prefix, mode, *args = sys.argv[1:]
    keys = [k for k in os.environ.get("CHANNELS_KEYS", "").split(",") if k]
    options = {"symmetric_encryption_keys": keys} if keys else {}
    hosts_json = os.environ.get("CHANNELS_HOSTS_JSON")
    hosts = json.loads(hosts_json) if hosts_json else hosts.split(",")
    if os.environ.get("CHANNELS_PUBSUB"):
        layer = RedisPubSubChannelLayer(hosts=hosts, prefix=prefix, **options)
    else:
        layer = RedisChannelLayer(hosts=hosts, prefix=prefix, capacity=1000, **options)
    if mode == "group_send":
        await layer.group_send(args[0], from_json(json.loads(args[1])))
    elif mode == "send":
        await layer.send(args[0], from_json(json.loads(args[1])))
    elif mode == "listen":
        channel = await layer.new_channel()
        await layer.group_add(args[0], channel)
        emit({"channel": channel})
        for _ in range(int(args[1])):
            emit(to_json(await asyncio.wait_for(layer.receive(channel), 10)))
    elif mode == "worker":
        for _ in range(int(args[1])):
            emit(to_json(await asyncio.wait_for(layer.receive(args[0]), 10)))
    else:
        raise SystemExit(f"unknown mode {mode}")
    emit({"done": True})


asyncio.run(asyncio.wait_for(main(), 30))
