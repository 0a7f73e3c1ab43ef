"""Where a materialisation ran: the host name and the worker id (`RUV_WORKER_ID`, set per Celery
worker by `make cluster`; else `pid-<n>` for the embedded instance), as one metadata entry."""

import os
import socket


def worker_id() -> str:
    return f"{socket.gethostname()}/{os.environ.get('RUV_WORKER_ID') or f'pid-{os.getpid()}'}"


def where_it_ran() -> dict[str, str]:
    """`**where_it_ran()` into an asset's metadata: the `worker` entry every materialisation has."""
    return {"worker": worker_id()}
