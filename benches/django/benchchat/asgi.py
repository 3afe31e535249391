"""ASGI entry point: `daphne benchchat.asgi:application` from benches/django/."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchchat.settings")
django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from benchchat.consumers import ChatConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "websocket": URLRouter([path("ws/chat/<str:room>/", ChatConsumer.as_asgi())]),
    }
)
