from django.conf import settings
from django.db import models


class Adapter(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="adapters")
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="adapter_owner_name_unique")]


class AdapterVersion(models.Model):
    """Immutable once written: files under `prefix` in S3, lineage in `metadata` (= foundry.json)."""

    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    # One job publishes at most one version: the unique one-to-one makes publishing idempotent.
    job = models.OneToOneField("jobs.Job", on_delete=models.SET_NULL, null=True, related_name="result_version")
    prefix = models.CharField(max_length=400)
    files = models.JSONField(default=list)  # [{"name", "size", "sha256"}]
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    archived_at = models.DateTimeField(null=True, blank=True)  # hidden from lists, still fetchable by number

    class Meta:
        ordering = ["-version"]
        constraints = [models.UniqueConstraint(fields=["adapter", "version"], name="adapter_version_unique")]


class AdapterVersionTag(models.Model):
    """Tags are labels kept beside a version, not in it: changing them leaves the version's files untouched."""

    version = models.ForeignKey(AdapterVersion, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["version", "name"], name="adapter_version_tag_unique")]


class AdapterAlias(models.Model):
    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64)
    # PROTECT: a version an alias points at cannot disappear under it.
    version = models.ForeignKey(AdapterVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["adapter", "name"], name="adapter_alias_name_unique")]


class AliasMove(models.Model):
    """One row per alias change. Keyed by name, not by alias row, so the history outlives a dropped alias."""

    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="alias_moves")
    alias = models.CharField(max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    from_version = models.PositiveIntegerField(null=True)  # null: the alias was created
    to_version = models.PositiveIntegerField(null=True)  # null: the alias was dropped
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class MergeStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"



class AdapterMerge(models.Model):
    """A request to merge versions into a new version of `adapter_name`, run by a worker (queued -> running ->
    succeeded | failed). One merge publishes at most one version (`result`, one-to-one)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="adapter_merges")
    adapter_name = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=MergeStatus.choices, default=MergeStatus.QUEUED)
    method = models.CharField(max_length=32)  # of the sources: lora or lt_sft
    combination_type = models.CharField(max_length=32)
    params = models.JSONField(default=dict)  # density, svd_rank, seed
    sources = models.JSONField(default=list)  # [{"version_id", "adapter", "version", "weight"}]
    result = models.OneToOneField(AdapterVersion, on_delete=models.SET_NULL, null=True, related_name="merge")
    error = models.JSONField(null=True, blank=True)  # {"code", "message"}
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
