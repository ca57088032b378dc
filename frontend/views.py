"""Pages of the web UI. Each renders a shell; the page's script reads and writes through the JSON API
(/api/v1, session cookie + CSRF token), so the UI and the API share every service and selector. The few
reads the API has no endpoint for (token list, dataset preview, the hyperparameter schema) are done here."""

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from api.accounts.services import token_create, token_revoke
from api.datasets.selectors import dataset_get, dataset_preview
from api.jobs.selectors import job_get
from api.registry.selectors import adapter_get
from storage.s3 import StorageError
from workers.training.hyperparameters import Hyperparameters

PREVIEW_ROWS = 10


class SignInView(auth_views.LoginView):
    template_name = "frontend/sign_in.html"
    redirect_authenticated_user = True
    next_page = "jobs"


class SignOutView(auth_views.LogoutView):
    next_page = "sign-in"


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("jobs")


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    created = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        if not name or len(name) > 100:
            messages.error(request, "Give the token a name of 1 to 100 characters.")
        else:
            created = {"name": name, "token": token_create(user=request.user, name=name)}
    rows = request.user.api_tokens.order_by("-id")
    return render(request, "frontend/tokens.html", {"tokens": rows, "created": created, "page": "tokens"})


@login_required
@require_POST
def token_delete(request: HttpRequest, token_id: int) -> HttpResponse:
    if token_revoke(user=request.user, token_id=token_id):
        messages.success(request, "Token revoked: it no longer authenticates.")
    else:
        messages.error(request, "No such token.")
    return redirect("tokens")


@login_required
def datasets(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/datasets.html", {"page": "datasets"})


@login_required
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = dataset_get(user=request.user, dataset_id=dataset_id)
    preview, preview_error = [], ""
    try:
        preview = dataset_preview(dataset=dataset, rows=PREVIEW_ROWS)
    except StorageError as exc:
        preview_error = f"The file could not be read from storage: {exc}"
    columns = list(dict.fromkeys(key for row in preview for key in row.get("record", {})))
    rows = [{"line": r["line"], "problem": r.get("problem"),
             "cells": [r["record"].get(c, "") for c in columns] if "record" in r else []} for r in preview]
    return render(request, "frontend/dataset_detail.html", {
        "page": "datasets", "dataset": dataset, "report": dataset.report, "columns": columns, "rows": rows,
        "preview_error": preview_error, "preview_rows": PREVIEW_ROWS,
    })


@login_required
def job_new(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/job_new.html",
                  {"page": "job-new", "hyperparameters_schema": Hyperparameters.model_json_schema()})


@login_required
def jobs(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/jobs.html", {"page": "jobs"})


@login_required
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    return render(request, "frontend/job_detail.html", {"page": "jobs", "job": job_get(user=request.user,
                                                                                        job_id=job_id)})


@login_required
def adapters(request: HttpRequest) -> HttpResponse:
    return render(request, "frontend/adapters.html", {"page": "adapters"})


@login_required
def adapter_detail(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, "frontend/adapter_detail.html",
                  {"page": "adapters", "adapter": adapter_get(user=request.user, name=name)})
