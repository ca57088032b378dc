"""The operators' page (staff only): workers with their devices and queues, queue depths, jobs by state,
failures by code, and links to the raw figures (Prometheus /metrics, the JSON API)."""

import logging
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from api.ops.selectors import jobs_summary, queue_depths, workers_list

log = logging.getLogger(__name__)


def _broker_state() -> dict[str, Any]:
    try:
        return {"workers": workers_list(), "queues": queue_depths(), "broker_error": ""}
    except Exception as exc:  # the page still shows the database side when Redis is down
        log.warning("operators page: broker unreadable", exc_info=True)
        return {"workers": [], "queues": {}, "broker_error": f"{type(exc).__name__}: {exc}"[:300]}


@login_required
def operators(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("operators only")
    return render(request, "ops/operators.html", {"page": "ops", "jobs": jobs_summary(), **_broker_state()})
