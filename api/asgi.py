"""The ASGI application uvicorn serves (`python -m api.web`).

Every view of this project is synchronous (DRF). Django's own ASGI handler runs a process's sync views on one
shared thread and hops between the event loop and that thread for every middleware, which cost ~40% more CPU per
request and serialised requests that wait on the database (bench/api_load.py). So the ASGI application is
Django's WSGI handler behind a2wsgi: one hop per request, WEB_THREADS requests at once per process, and
streaming responses (downloads, server-sent events) still stream."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "api.settings")

from a2wsgi import WSGIMiddleware  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = WSGIMiddleware(get_wsgi_application(), workers=settings.WEB_THREADS)

if settings.WEB_WARM:
    from workers.training.estimate import warm

    warm()  # the model code's imports (seconds) at start-up, not in the first submission's request
