from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from api.jobs.models import Job, JobEvent
from api.registry.models import AdapterVersion


def job_events_newest_first(*, job: Job, before_seq: int | None) -> QuerySet[JobEvent]:
    """OpenAI lists events newest first; `after` an event means older than it."""
    events = JobEvent.objects.filter(job=job).order_by("-seq")
    return events.filter(seq__lt=before_seq) if before_seq is not None else events


def adapter_versions_active(*, user: AbstractBaseUser) -> QuerySet[AdapterVersion]:
    """Every version of the user's adapters that is not archived: the fine-tuned models."""
    return AdapterVersion.objects.filter(adapter__owner=user, archived_at__isnull=True).select_related(
        "adapter").order_by("adapter__name", "-version")
