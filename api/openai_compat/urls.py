from django.urls import path

from api.openai_compat.apis import (
    ChatCompletionApi,
    CompletionApi,
    FileContentApi,
    FileDetailApi,
    FileListCreateApi,
    FineTuningJobCancelApi,
    FineTuningJobCheckpointsApi,
    FineTuningJobDetailApi,
    FineTuningJobEventsApi,
    FineTuningJobListCreateApi,
    ModelDetailApi,
    ModelListApi,
)

urlpatterns = [
    path("files", FileListCreateApi.as_view()),
    path("files/<str:file_id>", FileDetailApi.as_view()),
    path("files/<str:file_id>/content", FileContentApi.as_view()),
    path("fine_tuning/jobs", FineTuningJobListCreateApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>", FineTuningJobDetailApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/cancel", FineTuningJobCancelApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/events", FineTuningJobEventsApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", FineTuningJobCheckpointsApi.as_view()),
    path("models", ModelListApi.as_view()),
    path("models/<path:model>", ModelDetailApi.as_view()),
    path("chat/completions", ChatCompletionApi.as_view()),
    path("completions", CompletionApi.as_view()),
]
