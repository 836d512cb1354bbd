"""A local stand-in of the part of Anthropic's Messages API that litellm calls, for tests only.

It is NOT Anthropic: it answers ``POST /v1/messages`` (streamed as the SSE events Anthropic
documents: ``message_start`` with ``usage.input_tokens``, ``content_block_start``,
``content_block_delta`` per word, ``content_block_stop``, ``message_delta`` with
``usage.output_tokens``, ``message_stop``; or one ``message`` body), checks the
``x-api-key`` and ``anthropic-version`` headers, and records every request with what it
reported and how far it got. Its token counts are its own rule, chosen to differ from any
tokenizer the gateway has, so a test can tell the provider's figures from a count:
``input_tokens`` is 7 plus the words of the system prompt and the messages' texts;
``output_tokens`` is one per word sent (at most ``max_tokens``), one per piece of a tool
call's arguments, plus ``Reply.extra_output``.

A test can make it answer slowly (``Reply.delay``), die mid-stream (``Reply.die_after``: the
connection is cut after that many words, with no ``message_stop``) or refuse (``Reply.status``).
The bridge reaches it through the cluster's ``api_base``.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-ant-standin-secret"
VERSION = "2023-06-01"


@dataclass
class Reply:
    """What the stand-in answers next (``StandIn.reply``)."""

    words: list[str] = field(default_factory=lambda: [" Hello", " from", " the", " stand", "-in", "."])
    delay: float = 0.0  # seconds before each word
    die_after: int | None = None  # words sent before the connection is cut (streams only)
    status: int = 200  # another status: an Anthropic-shaped error with ``error_message``
    error_message: str = "Overloaded: anthropic-internal shard 7 at 10.1.2.3"
    extra_output: int = 0  # output tokens reported beyond one per word
    tool: tuple[str, list[str]] | None = None  # a tool_use block after the words: name, JSON pieces


@dataclass
class Call:
    """One request as the stand-in saw it, and what it reported."""

    body: dict[str, Any]
    api_key: str | None
    version: str | None
    input_tokens: int = 0
    output_tokens: int = 0  # as reported at the end (0 when it never got there)
    sent: int = 0  # words written to the connection
    finished: bool = False  # message_stop (or the whole body) written
    gone: bool = False  # the client closed the connection before the end
    cut: bool = False  # the stand-in cut the connection (``Reply.die_after``)
    refused: bool = False  # answered with an error status

    @property
    def ended(self) -> bool:
        return self.finished or self.gone or self.cut or self.refused


@dataclass
class StandIn:
    server: ThreadingHTTPServer
    api_key: str = API_KEY
    reply: Reply = field(default_factory=Reply)
    calls: list[Call] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last(self, timeout: float = 10.0) -> Call:
        """The last request, once it has ended (finished, gone or cut)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.calls and self.calls[-1].ended:
                return self.calls[-1]
            time.sleep(0.02)
        raise AssertionError(f"no ended request at the stand-in: {self.calls}")


def input_tokens(body: dict[str, Any]) -> int:
    """The stand-in's own prompt count: 7 plus the words of every text."""
    texts: list[str] = []
    system = body.get("system")
    texts += _texts(system)
    for message in body.get("messages") or ():
        texts += _texts(message.get("content"))
    return 7 + sum(len(text.split()) for text in texts)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return []


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        standin = self.standin
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        call = Call(body, self.headers.get("x-api-key"), self.headers.get("anthropic-version"))
        reply = standin.reply
        standin.calls.append(call)
        if self.path.split("?")[0] != "/v1/messages":
            return self._error(call, 404, "not_found_error", f"Not found: {self.path}")
        if call.api_key != standin.api_key:
            return self._error(call, 401, "authentication_error", "invalid x-api-key")
        if not call.version:
            return self._error(call, 400, "invalid_request_error", "anthropic-version header is required")
        if reply.status != 200:
            kind = "overloaded_error" if reply.status == 529 else "api_error"
            return self._error(call, reply.status, kind, reply.error_message)
        call.input_tokens = input_tokens(body)
        words = reply.words[: int(body.get("max_tokens") or 4096)]
        stop = "end_turn" if len(words) == len(reply.words) else "max_tokens"
        if reply.tool is not None and stop == "end_turn":
            stop = "tool_use"
        message_id = "msg_" + secrets.token_hex(8)
        if body.get("stream"):
            self._stream(call, reply, words, stop, message_id)
        else:
            self._whole(call, reply, words, stop, message_id)

    def _error(self, call: Call, status: int, kind: str, message: str) -> None:
        call.refused = True
        raw = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.send_header("request-id", "req_" + secrets.token_hex(6))
        self.end_headers()
        self.wfile.write(raw)

    def _whole(self, call: Call, reply: Reply, words: list[str], stop: str, message_id: str) -> None:
        time.sleep(reply.delay * len(words))
        call.sent = len(words)
        call.output_tokens = len(words) + reply.extra_output
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(words)}]
        if stop == "tool_use" and reply.tool is not None:
            name, pieces = reply.tool
            call.output_tokens += len(pieces)
            content.append({"type": "tool_use", "id": "toolu_standin", "name": name,
                            "input": json.loads("".join(pieces))})
        raw = json.dumps({
            "id": message_id, "type": "message", "role": "assistant", "model": call.body.get("model"),
            "content": content, "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        call.finished = True

    def _stream(self, call: Call, reply: Reply, words: list[str], stop: str, message_id: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        start = {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": call.body.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": call.input_tokens, "output_tokens": 1}}}
        try:
            self._send(_event("message_start", start))
            self._send(_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                      "content_block": {"type": "text", "text": ""}}))
            self._send(_event("ping", {"type": "ping"}))
            for word in words:
                if reply.die_after is not None and call.sent >= reply.die_after:
                    self._die(call)
                    return
                time.sleep(reply.delay)
                self._send(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                          "delta": {"type": "text_delta", "text": word}}))
                call.sent += 1
            call.output_tokens = len(words) + reply.extra_output
            self._send(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            if stop == "tool_use" and reply.tool is not None:
                call.output_tokens += self._tool_use(*reply.tool)
            self._send(_event("message_delta", {"type": "message_delta",
                                                "delta": {"stop_reason": stop, "stop_sequence": None},
                                                "usage": {"output_tokens": call.output_tokens}}))
            self._send(_event("message_stop", {"type": "message_stop"}))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            call.finished = True
        except OSError:  # the client went away: its connection is closed
            call.gone = True

    def _tool_use(self, name: str, pieces: list[str]) -> int:
        """A tool_use block as Anthropic streams one: its arguments as partial JSON pieces."""
        block = {"type": "tool_use", "id": "toolu_standin", "name": name, "input": {}}
        self._send(_event("content_block_start", {"type": "content_block_start", "index": 1,
                                                  "content_block": block}))
        for piece in pieces:
            delta = {"type": "input_json_delta", "partial_json": piece}
            self._send(_event("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                      "delta": delta}))
        self._send(_event("content_block_stop", {"type": "content_block_stop", "index": 1}))
        return len(pieces)

    def _send(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _die(self, call: Call) -> None:
        """Cut the connection mid-body, as a crashed server would: no last chunk."""
        call.cut = True
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


def start_anthropic_standin(api_key: str = API_KEY) -> StandIn:
    """The stand-in on a free loopback port, served from a thread until ``stop()``."""
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    standin = handler.standin = StandIn(server, api_key)
    threading.Thread(target=server.serve_forever, name="anthropic-standin", daemon=True).start()
    return standin
