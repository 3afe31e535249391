"""Settings of the minimal Django Channels chat that benches/redis_fanout.rs compares with.

The Redis URL comes from BENCH_REDIS_URL (the bench starts its own redis-server on a free
port). BENCH_REDIS_CAPACITY sets channels_redis's per-channel capacity (default 100, the
same as channels_redis's and the Rust layer's default). BENCH_LAYER=memory uses Django
Channels' InMemoryChannelLayer instead (one process, default capacity 100), as the Django
Channels tutorial does; benches/seed_scenario.rs runs it that way.
"""

import os

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "benchchat.asgi.application"
USE_TZ = True
DATABASES = {}
LOGGING_CONFIG = None

if os.environ.get("BENCH_LAYER") == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")],
                "capacity": int(os.environ.get("BENCH_REDIS_CAPACITY", "100")),
            },
        }
    }
