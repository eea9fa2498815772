"""The exceptions rlserve raises, as one small tree.

::

    RlserveError                 base of everything below; catch this at the CLI boundary
    ├── ConfigError              a scenario/config value is missing, unknown or out of range
    ├── InputError               a user-supplied file (trace, dataset, checkpoint) is malformed
    ├── BackendError             a server/replica/hardware backend failed or answered nonsense
    └── TelemetryUnavailable     the asked-for hardware counter does not exist here (no NVML, no RAPL)

Messages say what is wrong and what to do, in one line, naming the file/row/field involved, so the CLI can
print them without a traceback.
"""

from __future__ import annotations


class RlserveError(Exception):
    """Base class of all errors rlserve raises on purpose."""


class ConfigError(RlserveError, ValueError):
    """A configuration or scenario value is invalid."""


class InputError(RlserveError, ValueError):
    """A user-supplied input file or value is malformed."""


class BackendError(RlserveError, RuntimeError):
    """A serving backend (vLLM replica, NVML, HTTP peer) failed."""


class TelemetryUnavailable(RlserveError, RuntimeError):
    """The requested telemetry source does not exist on this machine."""
