from django.contrib.staticfiles.views import serve
from django.urls import path, re_path

from frontend import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.SignInView.as_view(), name="sign-in"),
    path("accounts/logout/", views.SignOutView.as_view(), name="sign-out"),
    path("tokens", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke", views.token_delete, name="token-revoke"),
    path("datasets", views.datasets, name="datasets"),
    path("datasets/<int:dataset_id>", views.dataset_detail, name="dataset"),
    path("jobs", views.jobs, name="jobs"),
    path("jobs/new", views.job_new, name="job-new"),
    path("jobs/<int:job_id>", views.job_detail, name="job"),
    path("adapters", views.adapters, name="adapters"),
    path("adapters/<str:name>", views.adapter_detail, name="adapter"),
    # The web process serves the UI's few static files itself (found by the staticfiles finders, DEBUG or not),
    # so `make run` needs no collectstatic or second server; a proxy in front may serve STATIC_ROOT instead.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]
