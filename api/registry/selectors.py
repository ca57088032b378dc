from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Max, Prefetch, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from api.accounts.scoping import visible_to
from api.registry.models import Adapter, AdapterAlias, AdapterMerge, AdapterVersion, AliasMove
from storage import s3

ACTIVE = Q(archived_at__isnull=True)


def adapter_list(*, user: AbstractBaseUser) -> QuerySet[Adapter]:
    """Counts and `latest` cover versions that are not archived."""
    active = Q(versions__archived_at__isnull=True)
    return Adapter.objects.filter(visible_to(user)).annotate(
        version_count=Count("versions", filter=active), latest_version=Max("versions__version", filter=active)
    ).order_by("name")


def adapter_get(*, user: AbstractBaseUser, name: str) -> Adapter:
    """The user's adapter `name`. Names are per user: staff reach another user's adapter by name when
    they have none of that name and exactly one other user has it."""
    own = Adapter.objects.filter(owner=user, name=name).first()
    if own is not None:
        return own
    if getattr(user, "is_staff", False):
        others = list(Adapter.objects.filter(name=name)[:2])
        if len(others) == 1:
            return others[0]
    raise Http404(f"no adapter named {name!r}")


def adapter_detail_get(*, user: AbstractBaseUser, name: str) -> Adapter:
    """The adapter with its counts and its versions that are not archived."""
    active_versions = AdapterVersion.objects.filter(ACTIVE).prefetch_related("tags", "aliases")
    adapter = adapter_get(user=user, name=name)
    return get_object_or_404(adapter_list(user=user).prefetch_related(Prefetch("versions", queryset=active_versions)),
                             id=adapter.id)


def _versions(adapter: Adapter) -> QuerySet[AdapterVersion]:
    return AdapterVersion.objects.filter(adapter=adapter).select_related("adapter").prefetch_related("tags", "aliases")


def adapter_version_list(*, user: AbstractBaseUser, name: str, filters: dict[str, Any]) -> QuerySet[AdapterVersion]:
    """filters: `tag` (a tag name) and `archived` (False: active only, the default; True: archived only;
    None: both)."""
    adapter = adapter_get(user=user, name=name)
    versions = _versions(adapter)
    archived = filters.get("archived", False)
    if archived is not None:
        versions = versions.filter(archived_at__isnull=not archived)
    if filters.get("tag"):
        versions = versions.filter(tags__name=filters["tag"])
    return versions.order_by("-version")


def adapter_version_get(*, user: AbstractBaseUser, name: str, ref: str) -> AdapterVersion:
    """ref is a version number (archived ones included), `latest` (the newest not archived) or an alias name."""
    adapter = adapter_get(user=user, name=name)
    versions = _versions(adapter)
    if ref == "latest":
        version = versions.filter(ACTIVE).order_by("-version").first()
    elif ref.isdigit():
        version = versions.filter(version=int(ref)).first()
    else:
        version = versions.filter(aliases__adapter=adapter, aliases__name=ref).first()
    if version is None:
        raise Http404(f"adapter {name!r} has no version or alias {ref!r}")
    return version


def adapter_alias_list(*, user: AbstractBaseUser, name: str) -> QuerySet[AdapterAlias]:
    adapter = adapter_get(user=user, name=name)
    return AdapterAlias.objects.filter(adapter=adapter).select_related("version").order_by("name")


def alias_move_list(*, user: AbstractBaseUser, name: str) -> QuerySet[AliasMove]:
    adapter = adapter_get(user=user, name=name)
    return AliasMove.objects.filter(adapter=adapter).select_related("user").order_by("-id")


def adapter_version_file_urls(*, version: AdapterVersion, seconds: int) -> list[dict[str, Any]]:
    """Each file of the version with a presigned GET URL that expires after `seconds`."""
    return [{**entry, "url": s3.presigned_url(version.prefix + entry["name"], seconds=seconds)}
            for entry in version.files]


CONFIG_KEYS = {"task", "base_model", "method", "method_config", "labels", "prompt_format", "trainable_parameters",
               "source"}
VOLATILE_KEYS = {"created_at"}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys; lists stay whole values (a changed label list is one difference)."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def adapter_version_compare(*, a: AdapterVersion, b: AdapterVersion) -> dict[str, Any]:
    """The differences between two versions' lineage (foundry.json), by section: `config` (base model, method and
    its config, task, labels), `hyperparameters`, `metrics` (with `delta` = b - a) and `lineage` (data, job, code)."""
    flat_a, flat_b = _flatten(a.metadata), _flatten(b.metadata)
    sections: dict[str, list[dict[str, Any]]] = {"config": [], "hyperparameters": [], "metrics": [], "lineage": []}
    for key in sorted(flat_a.keys() | flat_b.keys()):
        top = key.split(".", 1)[0]
        value_a, value_b = flat_a.get(key), flat_b.get(key)
        if top in VOLATILE_KEYS or value_a == value_b:
            continue
        if top in ("hyperparameters", "metrics"):
            section = top
        else:
            section = "config" if top in CONFIG_KEYS else "lineage"
        row = {"key": key, "a": value_a, "b": value_b}
        if section == "metrics" and _is_number(value_a) and _is_number(value_b):
            row["delta"] = value_b - value_a  # type: ignore[operator]
        sections[section].append(row)
    return {"a": a.version, "b": b.version, "identical": not any(sections.values()), "differences": sections}


def adapter_merge_list(*, user: AbstractBaseUser, name: str) -> QuerySet[AdapterMerge]:
    """The user's merges into adapter `name` (which exists only once a merge succeeded), newest first."""
    return AdapterMerge.objects.filter(owner=user, adapter_name=name).select_related("result").order_by("-id")


def adapter_merge_get(*, user: AbstractBaseUser, name: str, merge_id: int) -> AdapterMerge:
    return get_object_or_404(adapter_merge_list(user=user, name=name), id=merge_id)
