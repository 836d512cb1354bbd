"""A TCP proxy of ours on loopback that delays what passes through it: a slow Redis (or any
slow peer) for the fault suite, without touching the server itself.

It runs in a thread with its own event loop, so a synchronous test can start it, change its
delay while traffic flows, and stop it. Every read in either direction waits ``delay``
seconds before it is passed on (a slow network or a starved server: replies come late, in
order).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from launcher.embedded import free_port


class SlowProxy:
    """``127.0.0.1:port`` forwards to ``target_port``, each read held ``delay`` seconds."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="slow-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> SlowProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for writer in list(self._streams):
                writer.close()
            self._loop.close()

    async def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.close()
            return
        self._streams |= {client_out, server_out}
        await asyncio.gather(self._pipe(client_in, server_out), self._pipe(server_in, client_out))
        self._streams -= {client_out, server_out}

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()
