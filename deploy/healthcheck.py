"""The image's HEALTHCHECK: is this container's Switchyard process alive?

A gateway answers /healthz on its API port; a process without one answers on
``SWITCHYARD_METRICS_PORT``. Standard library only, so it costs no import of
the service and works under a read-only root filesystem. Exit 0 when either
answers 200, else 1.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def ports() -> list[str]:
    found = [os.environ.get("SWITCHYARD_GATEWAY__PORT", "8080"), os.environ.get("SWITCHYARD_METRICS_PORT", "")]
    return [p for p in dict.fromkeys(found) if p]


def alive(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(0 if any(alive(p) for p in ports()) else 1)
