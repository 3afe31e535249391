"""A minimal Django site whose logins a Rust server recognises (tests/django_auth.rs).

Everything that varies comes from the environment:
- DJANGO_SECRET_KEY, DJANGO_SECRET_KEY_FALLBACKS (comma-separated);
- SITE_SESSION_ENGINE: signed_cookies, db, cache or cached_db (Django's SESSION_ENGINE backends);
- SITE_DATABASE: sqlite:/ABSOLUTE/PATH or postgresql://USER@HOST:PORT/NAME;
- SITE_CACHE, SITE_CACHE_KEY_PREFIX, SITE_CACHE_VERSION: a Redis URL for Django's RedisCache.
"""

import os
from pathlib import Path

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
SECRET_KEY_FALLBACKS = [k for k in os.environ.get("DJANGO_SECRET_KEY_FALLBACKS", "").split(",") if k]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "urls"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [Path(__file__).resolve().parent / "templates"],
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]
SESSION_ENGINE = "django.contrib.sessions.backends." + os.environ.get("SITE_SESSION_ENGINE", "db")
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

_database = os.environ["SITE_DATABASE"]
if _database.startswith("sqlite:"):
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _database[len("sqlite:") :]}}
else:
    from urllib.parse import urlsplit

    _url = urlsplit(_database)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _url.path.lstrip("/"),
            "USER": _url.username or "",
            "PASSWORD": _url.password or "",
            "HOST": _url.hostname,
            "PORT": str(_url.port or 5432),
        }
    }

if os.environ.get("SITE_CACHE"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["SITE_CACHE"],
            "KEY_PREFIX": os.environ.get("SITE_CACHE_KEY_PREFIX", ""),
            "VERSION": int(os.environ.get("SITE_CACHE_VERSION", "1")),
        }
    }
