"""The one error type the proxy answers clients with: an HTTP status plus an OpenAI-style JSON body.

Every way a request can fail inside the proxy (bad body, missing API key, admission queue full or timed out,
no replica reachable, all attempts failed, router bug) becomes a :class:`ProxyError`; the app turns it into
``{"error": {"message", "type", "code"}}`` with the status below, the same shape vLLM and OpenAI use, so
clients need no special handling. The ``type`` is also the ``kind`` label of ``rlserve_proxy_errors_total``.

====  ======================  ==========================================================================
code  type                    when
====  ======================  ==========================================================================
400   invalid_request         body is not a JSON object, is nested too deeply, or its prompt/messages have a
                              shape no OpenAI server accepts (e.g. a ``text`` part that is a number)
401   unauthorized            API key missing or wrong
404   not_found               unknown path, or unknown replica index on the admin API
405   method_not_allowed      a known path with the wrong method
408   request_timeout         the body was not received within ``client_timeout_s``
413   request_too_large       body over 64 MiB
429   queue_full              the chosen replica's admission queue is full
503   queue_timeout           no slot on the chosen replica within ``queue_timeout_s``
503   no_replica              every replica is down or was already tried
502   upstream_failed         every attempt failed before the first byte (messages name replicas by index,
                              never by URL, and give no connection details)
500   router_failed           the router raised or returned an index out of range (a policy bug)
500   internal_error          anything else that went wrong inside the proxy (one log line, no traceback)
====  ======================  ==========================================================================
"""

from __future__ import annotations

from rlserve.errors import BackendError


class ProxyError(BackendError):
    """A request the proxy could not serve; ``status`` and ``type`` go to the client."""

    def __init__(self, status: int, type_: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, dict[str, object]]:
        """The OpenAI-style error object."""
        return {"error": {"message": str(self), "type": self.type, "code": self.status}}
