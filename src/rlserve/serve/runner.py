"""Ways to run the proxy: in the foreground until a signal (the CLI), or on a background thread (tests, tools).

The background form gives the proxy its own event loop on its own thread, so a synchronous caller (a test, a
benchmark, an energy controller's control loop) can drive traffic or change caps without sharing a loop with it;
:meth:`RouterProxy.set_concurrency_cap` is safe to call from that caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Callable, Iterator

from rlserve.aio import running_in_thread
from rlserve.errors import ConfigError
from rlserve.policies.base import Router
from rlserve.serve.config import ProxyConfig
from rlserve.serve.proxy import RouterProxy


@contextlib.contextmanager
def proxy_in_thread(config: ProxyConfig, router: Router | None = None) -> Iterator[RouterProxy]:
    """Start a proxy on a daemon thread; yields it once it accepts connections; stops it on exit."""
    with running_in_thread(RouterProxy(config, router), "rlserve-proxy") as proxy:
        yield proxy


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def single_threaded_torch() -> None:
    """One intra-op thread for a policy that runs torch per decision, if torch is loaded at all.

    The proxy decides one request at a time on one thread; splitting a batch-of-one forward pass over every core
    only adds synchronisation (measured: ~3.5x slower on 2 cores, docs/serve.md). The shipped PPO router no longer
    runs torch per decision (it uses a compiled copy of its actor), but a custom router might.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def loop_factory(event_loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event-loop constructor for ``event_loop``: ``uvloop`` (libuv; roughly halves the proxy's own overhead),
    ``asyncio`` (the standard loop, ``None``), or ``auto`` (uvloop when installed).

    Raises:
        ConfigError: an unknown name, or ``uvloop`` asked for but not installed.
    """
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {event_loop!r}")
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise ConfigError("event loop 'uvloop' needs the uvloop package: pip install 'rlserve[serve]'") from None
        return None
    return uvloop.new_event_loop


def run_proxy(config: ProxyConfig, router: Router | None = None,
              on_started: Callable[[RouterProxy], None] | None = None, event_loop: str = "auto") -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut down cleanly.

    ``on_started``, when given, is called with the started proxy (the CLI prints the address there).
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with RouterProxy(config, router) as proxy:
            # Everything allocated so far (modules, the router, a PPO network) lives as long as the process: freeze
            # it out of the cyclic collector, whose full collections would otherwise walk it all and stall every
            # in-flight request for tens of milliseconds (measured: the added p99 latency at 1,000 req/s fell from
            # 164 ms to under 1 ms; docs/serve.md).
            gc.collect()
            gc.freeze()
            single_threaded_torch()
            if on_started is not None:
                on_started(proxy)
            await stop.wait()

    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        runner.run(main())
