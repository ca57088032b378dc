"""The web process: `python -m api.web [--host H] [--port P]`, what `manage.py launch` and every deployment run.

uvicorn serves the ASGI application (api/asgi.py: WEB_THREADS requests at once per process) with WEB_WORKERS
processes, so that the Python work of requests runs on every core. With several processes, the
Prometheus request counters live in files that every process writes (prometheus_client's multiprocess mode) and
GET /metrics in any of them adds them up: PROMETHEUS_MULTIPROC_DIR, a fresh temporary folder unless set (then
emptied at start, as prometheus_client asks)."""

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "api.settings")
    from django.conf import settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=settings.WEB_HOST)
    parser.add_argument("--port", type=int, default=settings.WEB_PORT)
    args = parser.parse_args()

    made = None
    if settings.WEB_WORKERS > 1:
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if given:
            for stale in Path(given).glob("*.db"):
                stale.unlink()
        else:
            made = tempfile.mkdtemp(prefix="foundry-prometheus-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = made  # before any process imports prometheus_client
    import uvicorn

    try:
        uvicorn.run("api.asgi:application", host=args.host, port=args.port, workers=settings.WEB_WORKERS,
                    log_level="info")
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main()
