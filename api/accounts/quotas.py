"""Per-user quotas, checked inside the transaction that creates the object, under a lock on the
user's row, so concurrent requests cannot all slip under the limit."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Sum
from rest_framework import exceptions


class QuotaExceeded(exceptions.APIException):
    status_code = 429
    default_code = "quota_exceeded"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def user_lock(*, user: AbstractBaseUser) -> None:
    """Serialise this user's quota-checked writes (call inside transaction.atomic)."""
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()


def user_storage_bytes(*, user: AbstractBaseUser) -> int:
    from api.datasets.models import Dataset
    from api.registry.models import AdapterVersion

    datasets = Dataset.objects.filter(owner=user).aggregate(n=Sum("size_bytes"))["n"] or 0
    versions = AdapterVersion.objects.filter(adapter__owner=user).values_list("files", flat=True)
    return int(datasets) + sum(entry["size"] for files in versions for entry in files)


def storage_quota_check(*, user: AbstractBaseUser, adding: int, param: str) -> None:
    used = user_storage_bytes(user=user)
    if used + adding > settings.STORAGE_QUOTA_BYTES:
        raise QuotaExceeded(f"storage quota exceeded: {used} bytes used + {adding} new > "
                            f"{settings.STORAGE_QUOTA_BYTES} (STORAGE_QUOTA_BYTES)", param)


def active_jobs_quota_check(*, user: AbstractBaseUser) -> None:
    from api.jobs.models import FINAL_STATES, Job

    active = Job.objects.filter(owner=user).exclude(status__in=FINAL_STATES).count()
    if active >= settings.MAX_ACTIVE_JOBS_PER_USER:
        raise QuotaExceeded(f"you have {active} queued or running jobs, the limit is "
                            f"{settings.MAX_ACTIVE_JOBS_PER_USER} (MAX_ACTIVE_JOBS_PER_USER); cancel one or wait")
