#!/usr/bin/env python3
"""Checks the chat and echo examples' WebSocket protocol with an independent client.

The client is Python's `websockets` library (its asyncio API), not anything from this
repository, so a check that passes here means the protocol works for clients we did not write.

Usage:
    protocol_check.py chat ws://127.0.0.1:PORT
    protocol_check.py echo ws://127.0.0.1:PORT     (server started with --greeting hello)

Prints one line per check passed and exits 0, or prints every failure and exits 1.
Every wait is bounded, so the script cannot hang: a check gets CHECK_TIMEOUT seconds, the whole
run RUN_TIMEOUT seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

FRAME_TIMEOUT = 5.0  # seconds to wait for one expected frame
QUIET_PERIOD = 0.5  # seconds of silence that count as "heard nothing"
CHECK_TIMEOUT = 12.0  # seconds for one check, all its frames included
RUN_TIMEOUT = 28.0  # seconds for the whole run

# Short, bounded handshakes and closing handshakes; the library's keepalive pings are off so
# that only the pings a check sends itself are in flight (the server's pings are still answered).
CONNECT_OPTIONS: dict[str, Any] = {"open_timeout": FRAME_TIMEOUT, "close_timeout": 2, "ping_interval": None}


class CheckFailed(Exception):
    """A protocol expectation that the server did not meet."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def open_ws(url: str, **options: Any) -> Any:
    return connect(url, **{**CONNECT_OPTIONS, **options})


async def recv(ws: ClientConnection, what: str) -> str | bytes:
    """The next message, or a failure naming what was expected."""
    try:
        return await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
    except TimeoutError:
        raise CheckFailed(f"no frame within {FRAME_TIMEOUT} s while waiting for {what}") from None
    except ConnectionClosed as closed:
        raise CheckFailed(f"connection closed ({describe_close(closed)}) while waiting for {what}") from None


async def recv_json(ws: ClientConnection, what: str) -> dict[str, Any]:
    message = await recv(ws, what)
    expect(isinstance(message, str), f"expected a text frame with {what}, got binary {message[:60]!r}")
    try:
        event = json.loads(message)
    except ValueError:
        raise CheckFailed(f"expected JSON for {what}, got {message[:200]!r}") from None
    expect(isinstance(event, dict), f"expected a JSON object for {what}, got {message[:200]!r}")
    return event


async def recv_event(ws: ClientConnection, kind: str, what: str) -> dict[str, Any]:
    """The next event, which must be of type `kind`."""
    event = await recv_json(ws, what)
    expect(event.get("type") == kind, f"expected {kind} ({what}), got {event}")
    return event


async def expect_silence(ws: ClientConnection, what: str) -> None:
    try:
        message = await asyncio.wait_for(ws.recv(), QUIET_PERIOD)
    except TimeoutError:
        return
    except ConnectionClosed as closed:
        raise CheckFailed(f"{what}: connection closed unexpectedly ({describe_close(closed)})") from None
    raise CheckFailed(f"{what}: expected nothing, got {shorten(message)}")


def describe_close(closed: ConnectionClosed) -> str:
    if closed.rcvd is None:
        return "no close frame received from the server (code 1006)"
    return f"server sent close code {closed.rcvd.code}, reason {closed.rcvd.reason!r}"


async def wait_for_close(ws: ClientConnection, what: str) -> ConnectionClosed:
    """Reads until the server closes; returns the exception that reported it."""
    deadline = time.monotonic() + FRAME_TIMEOUT
    skipped: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(ws.recv(), max(remaining, 0.01))
        except TimeoutError:
            raise CheckFailed(f"the server did not close within {FRAME_TIMEOUT} s after {what}; got {skipped}") from None
        except ConnectionClosed as closed:
            return closed
        skipped.append(shorten(message))


async def expect_close_code(ws: ClientConnection, code: int, what: str) -> ConnectionClosed:
    closed = await wait_for_close(ws, what)
    expect(closed.rcvd is not None, f"after {what}: {describe_close(closed)}, expected close code {code}")
    assert closed.rcvd is not None
    expect(closed.rcvd.code == code, f"after {what}: {describe_close(closed)}, expected close code {code}")
    return closed


async def expect_http_status(url: str, status: int, what: str, **options: Any) -> None:
    try:
        async with open_ws(url, **options) as ws:
            await ws.close()
    except InvalidStatus as refused:
        got = refused.response.status_code
        expect(got == status, f"{what}: expected HTTP {status}, got HTTP {got}")
        return
    raise CheckFailed(f"{what}: expected HTTP {status}, but the WebSocket handshake succeeded")


def shorten(message: str | bytes) -> str:
    kind = "text" if isinstance(message, str) else "binary"
    return f"{kind} {message[:80]!r}" + (f"... ({len(message)} long)" if len(message) > 80 else "")


# ---------------------------------------------------------------------------------------------
# chat


async def chat_presence_is_the_first_frame(base: str) -> None:
    async with open_ws(f"{base}/ws/chat/py-presence/?user=first") as ws:
        event = await recv_json(ws, "the presence frame")
        expect(event.get("type") == "chat.presence", f"the first frame must be chat.presence, got {event}")
        expect(event.get("users") == ["first"], f"presence must list exactly ['first'], got {event}")
        expect(event.get("connections") == {"first": 1}, f"presence counts first's one connection, got {event}")
    print("ok  chat: chat.presence is the first frame a newcomer gets, the newcomer included")


async def chat_two_clients_talk_and_other_rooms_hear_nothing(base: str) -> None:
    room = f"{base}/ws/chat/py-talk"
    async with open_ws(f"{base}/ws/chat/py-elsewhere/?user=outsider") as outsider:
        event = await recv_event(outsider, "chat.presence", "the outsider's presence")
        expect(event.get("users") == ["outsider"], f"the other room's presence lists only its member, got {event}")

        async with open_ws(f"{room}/?user=ann") as ann:
            event = await recv_event(ann, "chat.presence", "ann's presence")
            expect(event.get("users") == ["ann"], f"ann is alone in the room at first, got {event}")

            async with open_ws(f"{room}/?user=bob") as bob:
                event = await recv_event(bob, "chat.presence", "bob's presence")
                expect(event.get("users") == ["ann", "bob"], f"bob's presence lists ann and bob, got {event}")
                expect(event.get("connections") == {"ann": 1, "bob": 1}, f"one connection each, got {event}")
                event = await recv_event(ann, "chat.presence_diff", "bob's arrival, at ann")
                expect(event.get("joins") == {"bob": 1} and event.get("leaves") == {}, f"ann hears bob join, got {event}")
                print("ok  chat: presence lists the room's members; a presence diff tells the room who joined")

                plain = "hello from bob, <b>plain</b> text, héllo 世界 👋"
                await bob.send(plain)
                for listener, name in ((ann, "ann"), (bob, "bob (the sender)")):
                    event = await recv_event(listener, "chat.message", f"bob's plain-text message at {name}")
                    expect(event.get("user") == "bob", f"{name}: message is from bob, got {event}")
                    expect(event.get("text") == plain, f"{name}: text {plain!r} expected, got {event}")
                    expect(isinstance(event.get("ts"), (int, float)) and event["ts"] > 1e9, f"message has a ts, got {event}")
                print("ok  chat: a plain-text message reaches the other client and the sender")

                structured = 'ann says {"json": "inside"} and "quotes"'
                await ann.send(json.dumps({"message": structured}))
                for listener, name in ((bob, "bob"), (ann, "ann (the sender)")):
                    event = await recv_event(listener, "chat.message", f"ann's JSON message at {name}")
                    expect(event.get("user") == "ann", f"{name}: message is from ann, got {event}")
                    expect(event.get("text") == structured, f"{name}: text {structured!r} expected, got {event}")
                print('ok  chat: a {"message": ...} JSON message reaches the other client and the sender')

            event = await recv_event(ann, "chat.presence_diff", "bob's departure, at ann")
            expect(event.get("joins") == {} and event.get("leaves") == {"bob": 1}, f"ann hears bob leave, got {event}")
            print("ok  chat: a presence diff tells the room who left when a client disconnects")

        await expect_silence(outsider, "a client in another room")
        print("ok  chat: a client in another room hears nothing")


async def chat_close_word_closes_with_1000(base: str) -> None:
    for word in ("关闭", "/close", json.dumps({"message": "关闭"})):
        async with open_ws(f"{base}/ws/chat/py-close/?user=closer") as ws:
            await recv_event(ws, "chat.presence", "the presence frame")
            await ws.send(word)
            closed = await expect_close_code(ws, 1000, f"sending {word!r}")
            expect(isinstance(closed, ConnectionClosedOK), f"a 1000 close is a clean close, got {closed!r}")
    print("ok  chat: the close word (关闭, /close, or as JSON) closes with code 1000")


async def chat_two_mebibytes_close_with_1009(base: str) -> None:
    async with open_ws(f"{base}/ws/chat/py-big/?user=big", compression=None) as ws:
        await recv_event(ws, "chat.presence", "the presence frame")
        try:
            await ws.send("x" * (2 << 20))
        except ConnectionClosed:
            pass  # the server may close while the frame is still being written
        await expect_close_code(ws, 1009, "sending a 2 MiB text message")
    async with open_ws(f"{base}/ws/chat/py-big/?user=after") as ws:
        await recv_event(ws, "chat.presence", "the presence frame after the 1009 close")
    print("ok  chat: a 2 MiB message closes with code 1009 and the server keeps serving")


async def chat_invalid_utf8_closes_with_1007(base: str) -> None:
    async with open_ws(f"{base}/ws/chat/py-utf8/?user=bad") as ws:
        await recv_event(ws, "chat.presence", "the presence frame")
        await ws.send(b"\xff\xfe bad", text=True)  # a text frame whose payload is not UTF-8
        await expect_close_code(ws, 1007, "sending a text frame with invalid UTF-8")
    print("ok  chat: a text frame with invalid UTF-8 closes with code 1007")


async def chat_ping_gets_pong(base: str) -> None:
    async with open_ws(f"{base}/ws/chat/py-ping/?user=pinger") as ws:
        await recv_event(ws, "chat.presence", "the presence frame")
        for payload in (b"are you there?", b"", bytes(range(125))):
            pong = await ws.ping(payload)
            try:
                await asyncio.wait_for(pong, FRAME_TIMEOUT)
            except TimeoutError:
                raise CheckFailed(f"no pong within {FRAME_TIMEOUT} s for ping {payload[:20]!r}") from None
    print("ok  chat: ping gets pong (with payloads of 14, 0 and 125 bytes)")


async def chat_invalid_room_gets_403(base: str) -> None:
    for room in ("bad!room", "bad%20room", "x" * 51):
        await expect_http_status(f"{base}/ws/chat/{room}/", 403, f"room name {room!r}")
    print("ok  chat: invalid room names are refused with HTTP 403")


async def chat_foreign_origin_gets_403(base: str) -> None:
    url = f"{base}/ws/chat/py-origin/?user=o"
    for origin in ("http://evil.example", "https://attacker.test:8443"):
        await expect_http_status(url, 403, f"Origin {origin}", origin=origin)
    local = "http://" + base.split("://", 1)[1]
    async with open_ws(url, origin=local) as ws:
        await recv_event(ws, "chat.presence", f"the presence frame with same-site Origin {local}")
    print("ok  chat: a foreign Origin is refused with HTTP 403; the server's own origin is accepted")


CHAT_CHECKS: list[Callable[[str], Awaitable[None]]] = [
    chat_presence_is_the_first_frame,
    chat_two_clients_talk_and_other_rooms_hear_nothing,
    chat_close_word_closes_with_1000,
    chat_two_mebibytes_close_with_1009,
    chat_invalid_utf8_closes_with_1007,
    chat_ping_gets_pong,
    chat_invalid_room_gets_403,
    chat_foreign_origin_gets_403,
]


# ---------------------------------------------------------------------------------------------
# echo


async def echo_exact(ws: ClientConnection, message: str | bytes, what: str) -> None:
    await ws.send(message)
    reply = await recv(ws, f"the echo of {what}")
    expect(type(reply) is type(message), f"{what}: sent {shorten(message)}, got back {shorten(reply)} (wrong frame type)")
    expect(reply == message, f"{what}: sent {shorten(message)}, got back {shorten(reply)}")


async def echo_greeting_then_exact_echo(base: str) -> None:
    async with open_ws(f"{base}/ws/echo/") as ws:
        greeting = await recv(ws, "the greeting")
        expect(greeting == "hello", f"the first frame must be the text greeting 'hello', got {shorten(greeting)}")
        print("ok  echo: the greeting 'hello' is the first frame")

        texts = ["hello", "", "héllo wörld, 世界, 👋🏽, עברית", '{"message": "not parsed"}', " 关闭 ", "x" * 70_000]
        for text in texts:
            await echo_exact(ws, text, f"text {text[:20]!r}")
        print("ok  echo: text comes back exactly (ASCII, empty, non-ASCII, JSON, 70 000 characters)")

        binaries = [bytes(range(256)), b"", b"\x00", "关闭".encode(), bytes(range(256))[::-1] * 300]
        for data in binaries:
            await echo_exact(ws, data, f"binary {data[:8]!r}")
        print("ok  echo: binary comes back exactly (all 256 byte values, empty, NUL, the close word's bytes)")

        burst = [f"message {i}" for i in range(100)]
        for text in burst:
            await ws.send(text)
        replies = [await recv(ws, f"the echo of burst message {i}") for i in range(len(burst))]
        expect(replies == burst, f"a burst of 100 messages comes back in order, got {replies[:5]}...")
        print("ok  echo: a burst of 100 messages comes back in order")


async def echo_fifteen_mebibytes(base: str) -> None:
    async with open_ws(f"{base}/ws/echo/", max_size=None, compression=None) as ws:
        await recv(ws, "the greeting")
        data = os.urandom(15 << 20)
        await echo_exact(ws, data, "a 15 MiB binary message")
    print("ok  echo: a 15 MiB binary message comes back exactly")


async def echo_close_word_closes_with_1000(base: str) -> None:
    for word in ("关闭", "/close"):
        async with open_ws(f"{base}/ws/echo/") as ws:
            await recv(ws, "the greeting")
            await ws.send(word)
            closed = await expect_close_code(ws, 1000, f"sending {word!r}")
            expect(isinstance(closed, ConnectionClosedOK), f"a 1000 close is a clean close, got {closed!r}")
    print("ok  echo: the close word (关闭 or /close) closes with code 1000")


async def echo_ping_gets_pong(base: str) -> None:
    async with open_ws(f"{base}/ws/echo/") as ws:
        await recv(ws, "the greeting")
        pong = await ws.ping(b"ping?")
        try:
            await asyncio.wait_for(pong, FRAME_TIMEOUT)
        except TimeoutError:
            raise CheckFailed(f"no pong within {FRAME_TIMEOUT} s") from None
    print("ok  echo: ping gets pong")


ECHO_CHECKS: list[Callable[[str], Awaitable[None]]] = [
    echo_greeting_then_exact_echo,
    echo_fifteen_mebibytes,
    echo_close_word_closes_with_1000,
    echo_ping_gets_pong,
]


# ---------------------------------------------------------------------------------------------


async def run(checks: list[Callable[[str], Awaitable[None]]], base: str) -> list[str]:
    failures = []
    for check in checks:
        name = check.__name__
        started = time.monotonic()
        try:
            await asyncio.wait_for(check(base), CHECK_TIMEOUT)
            continue
        except CheckFailed as failure:
            reason = str(failure)
        except TimeoutError:
            elapsed = time.monotonic() - started
            reason = f"timed out after {elapsed:.1f} s (a handshake takes at most {FRAME_TIMEOUT} s, a check {CHECK_TIMEOUT} s)"
        except InvalidStatus as refused:
            reason = f"the handshake was refused with HTTP {refused.response.status_code}"
        except Exception as error:  # any other error is a failed check, reported by name
            reason = f"{type(error).__name__}: {error}"
        failures.append(f"{name}: {reason}")
        print(f"FAIL {name}: {reason}")
    return failures


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("chat", "echo") or not sys.argv[2].startswith("ws://"):
        print("usage: protocol_check.py chat|echo ws://HOST:PORT", file=sys.stderr)
        return 2
    # Line-buffered UTF-8 output, so a killed run still shows how far it got, whatever the locale.
    sys.stdout.reconfigure(encoding="utf-8", line_buffering=True)
    example, base = sys.argv[1], sys.argv[2].rstrip("/")
    checks = CHAT_CHECKS if example == "chat" else ECHO_CHECKS
    started = time.monotonic()
    try:
        failures = asyncio.run(asyncio.wait_for(run(checks, base), RUN_TIMEOUT))
    except TimeoutError:
        print(f"FAIL the whole run took more than {RUN_TIMEOUT} s")
        return 1
    elapsed = time.monotonic() - started
    if failures:
        print(f"{example}: {len(failures)} of {len(checks)} checks FAILED ({elapsed:.1f} s):")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print(f"{example}: all {len(checks)} checks passed against {base} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
