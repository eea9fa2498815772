"""Running an asyncio service on its own event loop in a daemon thread, for synchronous callers.

Tests, benchmarks and control loops drive the router proxy (or the fake OpenAI server) from ordinary
synchronous code; giving the service a private loop on its own thread keeps the two from sharing time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol, TypeVar


class AsyncService(Protocol):
    """Anything with an async ``start()`` (returns once serving) and ``stop()``."""

    async def start(self) -> None: ...  # noqa: D102

    async def stop(self) -> None: ...  # noqa: D102


S = TypeVar("S", bound=AsyncService)


@contextlib.contextmanager
def running_in_thread(service: S, name: str, join_timeout_s: float = 30.0) -> Iterator[S]:
    """Start ``service`` on a daemon thread; yield it once started; stop it and join the thread on exit.

    A failure to start is re-raised in the caller's thread (after a best-effort ``stop()``).
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(service.start())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
            with contextlib.suppress(Exception):
                loop.run_until_complete(service.stop())
            loop.close()
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(service.stop())
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    started.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield service
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=join_timeout_s)
