"""The local service (``headsync serve``): HTTP API, SQLite job store, worker subprocesses.

See docs/service.md. The command line calls :func:`serve`.
"""

from .server import serve

__all__ = ["serve"]
