"""The chat protocol of examples/chat, reduced to what the fan-out benchmark uses.

A client connects to /ws/chat/{room}/?user=NAME and sends text frames: plain text, or
{"message": "..."}. Each one is sent with group_send to group chat_<room>, and every member
receives {"type": "chat.message", "user", "text", "ts"}. No presence, join or leave events.
"""

import json
import time
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"chat_{self.room}"
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.user = query.get("user", ["anonymous"])[0]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return
        text = text_data
        try:
            parsed = json.loads(text_data)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "message" in parsed:
            text = str(parsed["message"])
        await self.channel_layer.group_send(
            self.group,
            {"type": "chat.message", "user": self.user, "text": text, "ts": time.time()},
        )

    async def chat_message(self, event):
        await self.send(
            text_data=json.dumps(
                {"type": "chat.message", "user": event["user"], "text": event["text"], "ts": event["ts"]}
            )
        )
