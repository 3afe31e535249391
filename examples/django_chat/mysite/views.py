import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import user_passes_test
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_POST


def home(request):
    return render(request, "home.html", {"chat_url": settings.CHAT_URL})


@user_passes_test(lambda user: user.is_active and user.is_staff, login_url="/login/")
@require_POST
def announce(request):
    """Sends an announcement to every client of a Rust chat room, through the channel layer.

    The event is the chat's own `chat.message`, so the Rust consumers pass it to their
    browsers as it is.
    """
    room = request.POST.get("room", "lobby")
    text = request.POST.get("text", "").strip()[:4000]
    if text:
        event = {"type": "chat.message", "user": "Django", "text": text, "ts": time.time()}
        async_to_sync(get_channel_layer().group_send)(f"chat_{room}", event)
    return HttpResponseRedirect("/")
