from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api.apis import BaseModelListApi, HealthApi, MethodListApi
from api.datasets.apis import DatasetDetailApi, DatasetListCreateApi
from api.jobs.apis import (
    JobCancelApi,
    JobCheckpointsApi,
    JobDetailApi,
    JobEstimateApi,
    JobEventsApi,
    JobListCreateApi,
    JobMetricsApi,
)
from api.ops.apis import OpsWorkersApi
from api.ops.metrics import metrics_view
from api.ops.views import operators
from api.registry.apis import (
    AdapterAliasApi,
    AdapterAliasListApi,
    AdapterCompareApi,
    AdapterDetailApi,
    AdapterListApi,
    AdapterMergeDetailApi,
    AdapterMergeListCreateApi,
    AdapterVersionArchiveApi,
    AdapterVersionDetailApi,
    AdapterVersionDownloadApi,
    AdapterVersionFilesApi,
    AdapterVersionListCreateApi,
    AdapterVersionTagsApi,
    PredictApi,
)

v1 = [
    path("health", HealthApi.as_view()),
    path("base-models", BaseModelListApi.as_view()),
    path("methods", MethodListApi.as_view()),
    path("datasets", DatasetListCreateApi.as_view()),
    path("datasets/<int:dataset_id>", DatasetDetailApi.as_view()),
    path("jobs", JobListCreateApi.as_view()),
    path("jobs/estimate", JobEstimateApi.as_view()),
    path("jobs/<int:job_id>", JobDetailApi.as_view()),
    path("jobs/<int:job_id>/cancel", JobCancelApi.as_view()),
    path("jobs/<int:job_id>/events", JobEventsApi.as_view()),
    path("jobs/<int:job_id>/metrics", JobMetricsApi.as_view()),
    path("jobs/<int:job_id>/checkpoints", JobCheckpointsApi.as_view()),
    path("predict", PredictApi.as_view()),
    path("adapters", AdapterListApi.as_view()),
    path("adapters/<str:name>", AdapterDetailApi.as_view()),
    path("adapters/<str:name>/versions/<str:ref>", AdapterVersionDetailApi.as_view()),
    path("adapters/<str:name>/versions/<str:ref>/download", AdapterVersionDownloadApi.as_view()),
    path("adapters/<str:name>/versions", AdapterVersionListCreateApi.as_view()),
    path("adapters/<str:name>/versions/<str:ref>/files", AdapterVersionFilesApi.as_view()),
    path("adapters/<str:name>/versions/<str:ref>/tags", AdapterVersionTagsApi.as_view()),
    path("adapters/<str:name>/versions/<str:ref>/archive", AdapterVersionArchiveApi.as_view()),
    path("adapters/<str:name>/aliases", AdapterAliasListApi.as_view()),
    path("adapters/<str:name>/aliases/<str:alias>", AdapterAliasApi.as_view()),
    path("adapters/<str:name>/compare", AdapterCompareApi.as_view()),
    path("adapters/<str:name>/merges", AdapterMergeListCreateApi.as_view()),
    path("adapters/<str:name>/merges/<int:merge_id>", AdapterMergeDetailApi.as_view()),
    path("ops/workers", OpsWorkersApi.as_view()),
]

urlpatterns = [
    path("api/v1/", include(v1)),
    path("v1/", include("api.openai_compat.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view),
    path("ops", operators, name="ops"),
    path("", include("frontend.urls")),
]

handler404 = "api.errors.not_found"
handler400 = "api.errors.bad_request"
