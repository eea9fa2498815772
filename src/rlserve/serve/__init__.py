"""The router proxy: any rlserve routing policy in front of real OpenAI-compatible (vLLM) replicas.

Public API::

    from rlserve.serve import ProxyConfig, ReplicaSpec, RouterProxy, proxy_in_thread, run_proxy

    cfg = ProxyConfig(replicas=(ReplicaSpec("http://127.0.0.1:8001"), ReplicaSpec("http://127.0.0.1:8002")),
                      router="least_outstanding")
    with proxy_in_thread(cfg) as proxy:        # or: async with RouterProxy(cfg) as proxy: ...
        proxy.set_concurrency_cap(0, 8)        # energy controller's actuator
        snap = proxy.snapshot()                # the ClusterSnapshot a router would see now

See ``docs/serve.md`` for the HTTP surface, admission control, retries and /metrics.
"""

from rlserve.serve.config import ProxyConfig, ReplicaSpec, load_replicas_file
from rlserve.serve.proxy import RouterProxy
from rlserve.serve.proxy_error import ProxyError
from rlserve.serve.runner import proxy_in_thread, run_proxy

__all__ = ["ProxyConfig", "ProxyError", "ReplicaSpec", "RouterProxy", "load_replicas_file", "proxy_in_thread",
           "run_proxy"]
