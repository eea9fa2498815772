"""Keep credentials out of everything the benchmark prints or writes (result JSON, messages, argv).

A base URL may carry ``user:password@``, an argument list may carry ``--api-key KEY`` or an ``Authorization``
header: results are shared and committed, so these are replaced by ``***`` wherever they are recorded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "***"
SECRET_FLAGS = ("--api-key", "--header", "--upstream-api-key")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """``http://user:pw@host:8000/x`` -> ``http://***@host:8000/x``; other text is returned unchanged."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", url)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line with URL credentials masked and the values of secret-bearing flags replaced."""
    out: list[str] = []
    masking = False
    for arg in argv:
        if arg.startswith("--"):
            name, eq, _ = arg.partition("=")
            masking = name in SECRET_FLAGS and not eq
            out.append(f"{name}={MASK}" if name in SECRET_FLAGS and eq else redact_url(arg))
        elif masking:
            out.append(MASK)
        else:
            out.append(redact_url(arg))
    return out
