from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_STATES = (JobStatus.RUNNING, JobStatus.UPLOADING)


class ErrorCode(models.TextChoices):
    # user errors: the input cannot work
    INVALID_FILE = "invalid_file"
    INVALID_CONFIG = "invalid_config"
    TIME_LIMIT = "time_limit"
    # system errors: something broke that is not the user's doing
    STORAGE_ERROR = "storage_error"
    WORKER_ERROR = "worker_error"
    WORKER_LOST = "worker_lost"


class Job(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    base_model = models.CharField(max_length=100)
    task = models.CharField(max_length=32)
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.PROTECT, related_name="jobs")
    validation_dataset = models.ForeignKey(
        "datasets.Dataset", on_delete=models.PROTECT, null=True, blank=True, related_name="validation_jobs"
    )
    method = models.CharField(max_length=50)
    method_config = models.JSONField(default=dict)
    hyperparameters = models.JSONField(default=dict)
    adapter_name = models.CharField(max_length=64)

    status = models.CharField(max_length=20, choices=JobStatus.choices, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    step = models.IntegerField(default=0)
    total_steps = models.IntegerField(null=True)
    epoch = models.FloatField(default=0.0)
    eta_seconds = models.IntegerField(null=True)
    estimate = models.JSONField(default=dict, blank=True,
                                help_text="tokens, steps, peak_memory_bytes, seconds (null until calibrated), device")
    error_code = models.CharField(max_length=32, blank=True, choices=ErrorCode.choices)
    error_message = models.TextField(blank=True)
    error_param = models.CharField(max_length=100, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    event_seq = models.IntegerField(default=0)
    priority = models.PositiveSmallIntegerField(default=5, help_text="0 (lowest) to 9 (highest)")
    attempts = models.PositiveSmallIntegerField(default=0)
    # The lease: the holder's token and when it runs out unless renewed by a heartbeat.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, db_index=True)
    queued_at = models.DateTimeField(null=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["-id"]


class JobEvent(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.IntegerField()
    type = models.CharField(max_length=40)
    level = models.CharField(max_length=10, default="info")
    message = models.TextField()
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="job_event_seq_unique")]


class JobCheckpoint(models.Model):
    """A complete checkpoint in S3 (its marker was written last); incomplete ones never get a row."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.IntegerField()
    epoch = models.FloatField()
    prefix = models.CharField(max_length=300)
    files = models.JSONField(default=list)  # [{"name", "size", "sha256"}]
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="job_checkpoint_step_unique")]


class JobMetric(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    step = models.IntegerField()
    epoch = models.FloatField()
    loss = models.FloatField(null=True)
    eval_loss = models.FloatField(null=True)
    eval_accuracy = models.FloatField(null=True)
    learning_rate = models.FloatField(null=True)
    tokens_per_second = models.FloatField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step", "id"]
