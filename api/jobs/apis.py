from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.datasets.examples import TASKS
from api.jobs.models import Job, JobCheckpoint, JobEvent, JobMetric, JobStatus
from api.jobs.selectors import (
    job_checkpoints,
    job_events,
    job_get,
    job_list,
    job_metrics,
    job_queue_eta_seconds,
    job_queue_positions,
    queue_wait_basis_recent,
)
from api.jobs.services import (
    job_cancel,
    job_create,
    job_input_estimate,
    job_input_resolve,
    job_memory_fits,
)
from api.pagination import paginated_response
from api.schema import page_parameters, paginated


class JobOutputSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    queue_eta_seconds = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["id", "status", "base_model", "task", "dataset", "validation_dataset", "method",
                  "method_config", "hyperparameters", "adapter_name", "priority", "progress", "queue_position",
                  "queue_eta_seconds", "estimate", "attempts", "error", "result", "cancel_requested", "created_at",
                  "started_at",
                  "finished_at"]

    def get_progress(self, job: Job) -> dict[str, Any]:
        return {"step": job.step, "total_steps": job.total_steps, "epoch": job.epoch,
                "eta_seconds": job.eta_seconds}

    def _queue(self) -> dict[str, Any]:
        """Queue positions for every job being serialized (one row or a page), read once per response."""
        root = self.root
        if not hasattr(root, "queue_cache"):
            jobs = [root.instance] if isinstance(root.instance, Job) else list(root.instance or [])
            root.queue_cache = {"positions": job_queue_positions(jobs=jobs), "basis": None}  # type: ignore[attr-defined]
        return root.queue_cache  # type: ignore[attr-defined]

    def get_queue_position(self, job: Job) -> int | None:
        return self._queue()["positions"].get(job.id) if job.status == JobStatus.QUEUED else None

    def get_queue_eta_seconds(self, job: Job) -> int | None:
        if job.status != JobStatus.QUEUED:
            return None
        queue = self._queue()
        queue["basis"] = queue["basis"] or queue_wait_basis_recent()
        return job_queue_eta_seconds(job=job, position=queue["positions"].get(job.id), basis=queue["basis"])

    def get_error(self, job: Job) -> dict[str, str] | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message, "param": job.error_param or None}

    def get_result(self, job: Job) -> dict[str, Any] | None:
        version = getattr(job, "result_version", None)
        if version is None:
            return None
        return {"adapter": version.adapter.name, "version": version.version,
                "ref": f"{version.adapter.name}@{version.version}"}


class JobListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        base_model = serializers.CharField(max_length=100)
        task = serializers.ChoiceField(choices=TASKS)
        dataset = serializers.IntegerField()
        validation_dataset = serializers.IntegerField(required=False, allow_null=True, default=None)
        method = serializers.CharField(max_length=50, default="lora")
        method_config = serializers.DictField(required=False, default=dict)
        hyperparameters = serializers.DictField(required=False, default=dict)
        adapter_name = serializers.CharField(max_length=64)
        priority = serializers.IntegerField(min_value=0, max_value=9, default=5,
                                            help_text="0 (lowest) to 9 (highest); higher runs first")

    @extend_schema(operation_id="jobs_list", responses=paginated(JobOutputSerializer),
                   parameters=[*page_parameters(),
                               OpenApiParameter("status", str, description="only jobs in this state")])
    def get(self, request: Request) -> Response:
        jobs = job_list(user=request.user, status=request.query_params.get("status"))
        return paginated_response(queryset=jobs, serializer_class=JobOutputSerializer, request=request, view=self)

    @extend_schema(request=InputSerializer, responses={201: JobOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = job_create(user=request.user, **data.validated_data)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class JobEstimateApi(APIView):
    """What a job would cost, before submitting it: the same body as POST /jobs (adapter_name optional)."""

    class InputSerializer(JobListCreateApi.InputSerializer):
        adapter_name = serializers.CharField(max_length=64, required=False)

    class OutputSerializer(serializers.Serializer):
        estimate = serializers.DictField(help_text="tokens, steps, mean_tokens_per_row, peak_memory_bytes, "
                                         "seconds (null until a worker of this kind has calibrated), device; "
                                         "empty while the dataset is still validating")
        largest_worker_memory_bytes = serializers.IntegerField(allow_null=True)
        fits = serializers.BooleanField(help_text="false: POST /jobs would refuse this config")

    @extend_schema(operation_id="jobs_estimate", request=InputSerializer, responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = {k: v for k, v in data.validated_data.items() if k not in {"adapter_name", "priority"}}
        estimate = job_input_estimate(job_input_resolve(user=request.user, **fields))
        fits, largest = job_memory_fits(estimate)
        return Response({"estimate": estimate, "largest_worker_memory_bytes": largest, "fits": fits})


class JobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        return Response(JobOutputSerializer(job_get(user=request.user, job_id=job_id)).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobOutputSerializer)
    def post(self, request: Request, job_id: int) -> Response:
        job = job_cancel(job=job_get(user=request.user, job_id=job_id))
        return Response(JobOutputSerializer(job).data)


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["seq", "type", "level", "message", "data", "created_at"]


class JobEventsApi(APIView):
    @extend_schema(responses=inline_serializer("JobEventPage", {"data": JobEventSerializer(many=True),
                                                            "last_seq": serializers.IntegerField()}),
                   parameters=[OpenApiParameter("after", int, description="only events with seq above this")])
    def get(self, request: Request, job_id: int) -> Response:
        job = job_get(user=request.user, job_id=job_id)
        after = serializers.IntegerField(min_value=0).run_validation(request.query_params.get("after", 0))
        events = list(job_events(job=job, after=after))
        return Response({"data": JobEventSerializer(events, many=True).data,
                         "last_seq": events[-1].seq if events else after})


class JobMetricSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobMetric
        fields = ["step", "epoch", "loss", "eval_loss", "eval_accuracy", "learning_rate", "tokens_per_second",
                  "created_at"]


class JobMetricsApi(APIView):
    @extend_schema(responses=inline_serializer("JobMetricList", {"data": JobMetricSerializer(many=True)}),
                   parameters=[OpenApiParameter("after_step", int, description="only metrics after this step")])
    def get(self, request: Request, job_id: int) -> Response:
        job = job_get(user=request.user, job_id=job_id)
        after = serializers.IntegerField(min_value=-1).run_validation(request.query_params.get("after_step", -1))
        return Response({"data": JobMetricSerializer(job_metrics(job=job, after_step=after), many=True).data})


class JobCheckpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobCheckpoint
        fields = ["step", "epoch", "metrics", "files", "created_at"]


class JobCheckpointsApi(APIView):
    @extend_schema(responses=inline_serializer("JobCheckpointList", {"data": JobCheckpointSerializer(many=True)}))
    def get(self, request: Request, job_id: int) -> Response:
        job = job_get(user=request.user, job_id=job_id)
        return Response({"data": JobCheckpointSerializer(job_checkpoints(job=job), many=True).data})
