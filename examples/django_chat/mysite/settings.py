"""The Django half of the django_chat example: its logins and its channel layer are shared with
the Rust chat (`cargo run --example chat -- --django-sessions ... --layer ...`).

What the Rust side must be told:
- SECRET_KEY: the same value in DJANGO_SECRET_KEY;
- DATABASES (sessions in `django_session`, users in `auth_user`): --django-sessions sqlite:///<DB>;
- CHANNEL_LAYERS: the same Redis and prefix in --layer redis://HOST:PORT/0?prefix=asgi.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-django-chat-example-change-me")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "mysite.urls"
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
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.csrf",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_CHAT_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.db"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("DJANGO_CHAT_REDIS", "redis://127.0.0.1:6379/0")]},
    }
}
# Where the Rust chat serves its page (the link on the home page).
CHAT_URL = os.environ.get("DJANGO_CHAT_URL", "http://127.0.0.1:8000/")
