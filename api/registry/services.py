import hashlib
import json
import math
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max
from django.http import Http404
from django.utils import timezone
from rest_framework import exceptions

from api.accounts.quotas import storage_quota_check, user_lock
from api.jobs.models import Job
from api.jobs.services import ADAPTER_NAME
from api.registry import checks
from api.registry.models import Adapter, AdapterAlias, AdapterMerge, AdapterVersion, AdapterVersionTag, AliasMove
from api.uploads import PayloadTooLarge
from storage import keys, s3


def adapter_version_publish(*, job: Job, directory: Path, metadata: dict[str, Any]) -> AdapterVersion:
    """Upload a finished job's adapter folder as the next version. Idempotent on the job:
    a second call returns the version the first one made."""
    existing = AdapterVersion.objects.filter(job=job).first()
    if existing:
        return existing
    return _version_store(user=job.owner, name=job.adapter_name, folder=directory, metadata=metadata, job=job)




class RegistryInputError(exceptions.ValidationError):
    """Bad input for a registry operation; `param` names the field (HTTP 400 in the API's error shape)."""

    def __init__(self, message: str, param: str):
        super().__init__({param: [message]})
        self.param = param


class RegistryStateError(exceptions.APIException):
    """The registry's state does not allow the operation (HTTP 409)."""

    status_code = 409
    default_code = "conflict"


HEADED_TASKS = ("classification", "token-classification")  # a head over label names (averaged when merging)
PREDICT_MAX_TOKENS = 512  # words per token-classification input
ALIAS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
TAG_MAX_COUNT = 32
TAG_MAX_LENGTH = 64


def _adapter_lock(adapter: Adapter) -> Adapter:
    """Alias moves, archiving and new versions of one adapter happen one at a time."""
    return Adapter.objects.select_for_update().get(id=adapter.id)


def adapter_alias_move(*, user: AbstractBaseUser, adapter: Adapter, alias: str, version: int) -> AdapterAlias:
    """Point `alias` at version number `version`, creating the alias if needed; every change is recorded."""
    if not ALIAS_NAME.match(alias) or alias.isdigit() or alias == "latest":
        raise RegistryInputError("alias names are 1-64 letters, digits, '_' or '-', not only digits, not 'latest'",
                                 "alias")
    with transaction.atomic():
        adapter = _adapter_lock(adapter)
        target = adapter.versions.filter(version=version).first()
        if target is None:
            raise RegistryInputError(f"adapter {adapter.name!r} has no version {version}", "version")
        if target.archived_at is not None:
            raise RegistryStateError(f"version {version} is archived; an alias cannot point at it")
        current = AdapterAlias.objects.filter(adapter=adapter, name=alias).select_related("version").first()
        if current is None:
            current = AdapterAlias.objects.create(adapter=adapter, name=alias, version=target)
            AliasMove.objects.create(adapter=adapter, alias=alias, user=user, from_version=None, to_version=version)
        elif current.version_id != target.id:
            AliasMove.objects.create(adapter=adapter, alias=alias, user=user, from_version=current.version.version,
                                     to_version=version)
            current.version = target
            current.save(update_fields=["version", "updated_at"])
        return current


def adapter_alias_drop(*, user: AbstractBaseUser, adapter: Adapter, alias: str) -> None:
    with transaction.atomic():
        adapter = _adapter_lock(adapter)
        current = AdapterAlias.objects.filter(adapter=adapter, name=alias).select_related("version").first()
        if current is None:
            raise Http404(f"adapter {adapter.name!r} has no alias {alias!r}")
        AliasMove.objects.create(adapter=adapter, alias=alias, user=user, from_version=current.version.version,
                                 to_version=None)
        current.delete()


def adapter_version_tags_set(*, version: AdapterVersion, tags: list[str]) -> list[str]:
    """Replace the version's tags (order kept, duplicates dropped). The version's files are not touched."""
    unique = list(dict.fromkeys(tags))
    if len(unique) > TAG_MAX_COUNT:
        raise RegistryInputError(f"at most {TAG_MAX_COUNT} tags", "tags")
    for tag in unique:
        if not isinstance(tag, str) or len(tag) > TAG_MAX_LENGTH or not TAG_NAME.match(tag):
            raise RegistryInputError(f"tag {tag!r}: 1-{TAG_MAX_LENGTH} letters, digits or '._:/-', starting with a "
                                     "letter or digit", "tags")
    with transaction.atomic():
        AdapterVersionTag.objects.filter(version=version).delete()
        AdapterVersionTag.objects.bulk_create(AdapterVersionTag(version=version, name=tag) for tag in unique)
    return unique


def adapter_version_archive(*, version: AdapterVersion) -> AdapterVersion:
    """Hide a version from lists and from `latest`; refused while an alias points at it."""
    with transaction.atomic():
        _adapter_lock(version.adapter)
        aliases = sorted(AdapterAlias.objects.filter(version=version).values_list("name", flat=True))
        if aliases:
            raise RegistryStateError(f"version {version.version} is the target of aliases {aliases}; "
                                     "move or drop them first")
        if version.archived_at is None:
            version.archived_at = timezone.now()
            version.save(update_fields=["archived_at"])
    return version


class _Sink:
    """A write-only, unseekable file: zipfile then writes each entry's sizes after its data (a data descriptor)
    instead of seeking back, so the archive can be sent as it is made."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def _zip_chunks(version: AdapterVersion) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:  # type: ignore[call-overload]
        for entry in version.files:
            info = zipfile.ZipInfo(entry["name"], date_time=version.created_at.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.file_size = entry["size"]  # lets zipfile choose zip64 up front for large files
            digest = hashlib.sha256()
            with archive.open(info, "w") as member:
                for chunk in s3.iter_object(version.prefix + entry["name"]):
                    digest.update(chunk)
                    member.write(chunk)
                    if data := sink.take():
                        yield data
            if digest.hexdigest() != entry["sha256"]:
                # Raising leaves the client a truncated archive with no central directory: unreadable, not wrong.
                raise s3.StorageError(f"{version.prefix}{entry['name']}: stored bytes do not match their sha256")
            yield sink.take()
    yield sink.take()


def adapter_version_zip_stream(*, version: AdapterVersion) -> Iterator[bytes]:
    """The version's files as one zip, made while it is sent: each file is streamed from S3 and its sha256
    checked on the way. Missing files are found before the first byte goes out."""
    for entry in version.files:
        if not s3.exists(version.prefix + entry["name"]):
            raise s3.StorageError(f"{version.prefix}{entry['name']} is missing from the object store")
    return _zip_chunks(version)


ALLOWED_UPLOAD_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
REQUIRED_UPLOAD_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def adapter_upload_max_bytes() -> int:
    return settings.ADAPTER_UPLOAD_MAX_BYTES


def _uploads_save(files: Iterable[UploadedFile], directory: Path) -> None:
    """Write the uploads to `directory` as they stream in, refusing unknown names and oversize totals."""
    limit, total, seen = adapter_upload_max_bytes(), 0, set()
    for upload in files:
        name = Path(upload.name or "").name
        if name not in ALLOWED_UPLOAD_FILES:
            raise RegistryInputError(f"{name!r} is not accepted: upload only {sorted(ALLOWED_UPLOAD_FILES)} "
                                     "(weights as safetensors only, never pickle / .bin / .pt)", "files")
        if name in seen:
            raise RegistryInputError(f"{name!r} given twice", "files")
        seen.add(name)
        with open(directory / name, "wb") as fh:
            for chunk in upload.chunks():
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"the upload is larger than the limit of {limit} bytes", "files")
                fh.write(chunk)
    missing = sorted(REQUIRED_UPLOAD_FILES - seen)
    if missing:
        raise RegistryInputError(f"missing {missing}: a peft folder has adapter_config.json and "
                                 "adapter_model.safetensors", "files")


def adapter_version_upload(*, user: AbstractBaseUser, name: str, base_model: str, files: Iterable[UploadedFile],
                           labels: list[str] | None = None) -> AdapterVersion:
    """Check an adapter trained elsewhere against its base model and store it as the adapter's next version.

    Nothing in the upload is loaded: the weights file is checked as safetensors by its bytes and its tensor shapes
    are compared, by header, with what peft builds from the uploaded config on the catalogue base model."""
    from workers.base_models import UnknownBaseModel, base_model_get

    if not ADAPTER_NAME.match(name):
        raise RegistryInputError("adapter names are 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a "
                                 "letter or digit", "name")
    try:
        entry = base_model_get(base_model)
    except UnknownBaseModel as exc:
        raise RegistryInputError(str(exc), "base_model") from exc
    with tempfile.TemporaryDirectory(prefix="foundry-upload-") as tmp_name:
        folder = Path(tmp_name)
        _uploads_save(files, folder)
        try:
            shapes = checks.safetensors_shapes(folder / "adapter_model.safetensors",
                                               param="files.adapter_model.safetensors")
            config = checks.adapter_config_read(folder / "adapter_config.json")
            task = checks.TASK_TYPES[config["task_type"]]
            if task in HEADED_TASKS and not labels:
                labels = checks.labels_infer(shapes)
                if not labels:
                    raise checks.AdapterCheckError("labels: give the label names of this classifier", "labels")
            expected = checks.adapter_shapes_expected(entry=entry, config=config,
                                                      labels=labels if task in HEADED_TASKS else None)
            checks.adapter_shapes_compare(expected=expected, got=shapes)
        except checks.AdapterCheckError as exc:
            raise RegistryInputError(str(exc), exc.param) from exc
        uploaded_readme = folder / "README.md"
        notes = uploaded_readme.read_text(encoding="utf-8", errors="replace") if uploaded_readme.exists() else ""
        metadata = {
            "format": 1,
            "source": "upload",
            "adapter": name,
            "task": task,
            "base_model": {"id": entry.id, "source": entry.hub_id or entry.source, "revision": entry.revision},
            "method": str(config["peft_type"]).lower(),
            "method_config": config,
            "hyperparameters": {},
            "labels": labels if task in HEADED_TASKS else [],
            "metrics": {},
            "uploaded_by": user.get_username(),
            "trainable_parameters": sum(math.prod(s) for s in shapes.values()),
            "created_at": timezone.now().isoformat(),
        }
        return _version_store(user=user, name=name, folder=folder, metadata=metadata, notes=notes)


def _version_store(*, user: AbstractBaseUser, name: str, folder: Path, metadata: dict[str, Any],
                   notes: str = "", job: Job | None = None) -> AdapterVersion:
    """Number the folder as the adapter's next version, add its model card and foundry.json, and store it.

    Under the adapter's lock, a job that already has its version gets that one back (the one-to-one
    constraint backs this up). A publish that died after uploading but before its row committed left
    files under the same number, which this one overwrites: the row is what makes a version exist."""
    with transaction.atomic():
        if job is None:  # an upload counts against the quota; a finished job's adapter is never refused
            user_lock(user=user)
            storage_quota_check(user=user, adding=sum(p.stat().st_size for p in folder.iterdir()), param="files")
        adapter, _ = Adapter.objects.get_or_create(owner=user, name=name)
        adapter = _adapter_lock(adapter)
        if job is not None:
            existing = AdapterVersion.objects.filter(job=job).first()
            if existing:
                return existing
        number = (adapter.versions.aggregate(n=Max("version"))["n"] or 0) + 1
        card = adapter_model_card(metadata=metadata, adapter=name, version=number)
        if notes.strip():
            card += "\n## Notes from the uploader\n\n" + notes
        (folder / "README.md").write_text(card, encoding="utf-8")
        (folder / "foundry.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        prefix = keys.adapter_version(user.pk, name, number)
        files = []
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            digest = s3.put_file(prefix + path.name, path)
            files.append({"name": path.name, "size": path.stat().st_size, "sha256": digest})
        return AdapterVersion.objects.create(adapter=adapter, version=number, job=job, prefix=prefix, files=files,
                                             metadata=metadata)


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, sort_keys=True, default=str) + "\n```\n"


def adapter_model_card(*, metadata: dict[str, Any], adapter: str, version: int) -> str:
    """README.md for a version folder, from its lineage (foundry.json): what it is, how it was made, its metrics
    and how to load it with plain peft."""
    base = metadata.get("base_model") or {}
    base_source = base.get("source") or base.get("id") or "the base model"
    method = metadata.get("method", "unknown")
    task = metadata.get("task", "")
    labels = metadata.get("labels") or []
    if metadata.get("source") == "upload":
        origin = f"uploaded by {metadata.get('uploaded_by', 'its owner')} (trained outside this service)"
    elif metadata.get("source") == "merge":
        merged = metadata.get("merge") or {}
        parents = ", ".join(f"`{p['adapter']}@{p['version']}` (weight {p['weight']})"
                            for p in metadata.get("parents") or [])
        origin = f"merged by `{merged.get('combination_type')}` from {parents}"
    else:
        origin = f"trained by Adapter Foundry job {metadata.get('job_id')}"
    lines = [
        f"# {adapter} v{version}",
        "",
        f"A `{method}` adapter for `{base_source}` ({task or 'unknown task'}), {origin}.",
        "",
        "## Base model",
        "",
        f"- catalogue id: `{base.get('id')}`",
        f"- source: `{base_source}`",
        f"- revision: `{base.get('revision') or 'default'}`",
        "",
        "## Method and config",
        "",
        f"Method `{method}`" + (f", {metadata['trainable_parameters']:,} trainable parameters"
                                if isinstance(metadata.get("trainable_parameters"), int) else "") + ".",
        "",
        _json_block(metadata.get("method_config", {})),
    ]
    if metadata.get("hyperparameters"):
        lines += ["## Hyperparameters", "", _json_block(metadata["hyperparameters"])]
    datasets = metadata.get("datasets") or {}
    lines += ["## Data", ""]
    if datasets:
        lines += ["| split | sha256 | rows | file |", "|---|---|---|---|"]
        lines += [f"| {split} | `{d.get('sha256')}` | {d.get('rows')} | {d.get('filename', '')} |"
                  for split, d in sorted(datasets.items())]
    else:
        lines.append("Not recorded (the adapter was not trained here).")
    lines += ["", "## Metrics", ""]
    metrics = metadata.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in sorted(metrics.items())]
    else:
        lines.append("None recorded.")
    if labels:
        lines += ["", f"Labels, in the order of the classifier's outputs: {', '.join(f'`{x}`' for x in labels)}."]
    auto = {"classification": "AutoModelForSequenceClassification",
            "token-classification": "AutoModelForTokenClassification"}.get(task, "AutoModelForCausalLM")
    head = f', num_labels={len(labels)}' if task in HEADED_TASKS and labels else ""
    lines += [
        "",
        "## How to load it",
        "",
        "Unzip the version's download (or fetch its files) into a folder, then with plain peft:",
        "",
        "```python",
        "from peft import PeftModel",
        f"from transformers import {auto}",
        "",
        f'base = {auto}.from_pretrained("{base_source}"{head})',
        f'model = PeftModel.from_pretrained(base, "{adapter}-v{version}")',
        "```",
        "",
        "`foundry.json` beside the weights holds the full lineage (base model, data sha256, config, metrics, "
        "code and library versions).",
        "",
    ]
    return "\n".join(lines)


class InferenceError(Exception):
    """The inference server is down (status 503) or refused the request (its status and message)."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.status = status


def _predict_inputs_check(task: str, inputs: list[Any]) -> list[Any]:
    """classification: strings. token-classification: strings (split on whitespace) or lists of tokens, sent on
    as lists of tokens."""
    checked: list[Any] = []
    for i, item in enumerate(inputs):
        if task == "token-classification" and isinstance(item, str):
            item = item.split()
        if task == "classification" and not (isinstance(item, str) and item):
            raise RegistryInputError("a classification adapter takes non-empty strings", f"inputs[{i}]")
        if task == "token-classification" and not (
                isinstance(item, list) and 0 < len(item) <= PREDICT_MAX_TOKENS
                and all(isinstance(t, str) and t and len(t) <= 200 for t in item)):
            raise RegistryInputError(f"a token-classification adapter takes a string or a list of 1 to "
                                     f"{PREDICT_MAX_TOKENS} non-empty tokens (each at most 200 characters)",
                                     f"inputs[{i}]")
        checked.append(item)
    return checked


def adapter_predict(*, user: AbstractBaseUser, adapter: str, inputs: list[Any]) -> dict[str, Any]:
    """Resolve `name@ref` (a number, `latest` or an alias, now) and run the inputs on the inference server.
    Outputs: classification {"label", "scores"} per input; token-classification a list of {"token", "label",
    "score"} per input (the first sub-token of each word decides)."""
    import urllib.error
    import urllib.request

    from api.registry.selectors import adapter_version_get

    name, _, ref = adapter.partition("@")
    version = adapter_version_get(user=user, name=name, ref=ref or "latest")
    task = version.metadata.get("task")
    if task not in HEADED_TASKS:
        raise RegistryInputError(f"{name}@{version.version} is a {task!r} adapter; /predict serves "
                                 f"{' and '.join(HEADED_TASKS)} adapters", "adapter")
    inputs = _predict_inputs_check(str(task), inputs)
    body = json.dumps({"version": {"prefix": version.prefix, "files": version.files, "metadata": version.metadata},
                       "inputs": inputs}).encode()
    request = urllib.request.Request(f"{settings.INFERENCE_URL}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            outputs = json.loads(response.read())["outputs"]
    except urllib.error.HTTPError as exc:
        raise InferenceError(f"inference server: {exc.read().decode(errors='replace')[:500]}", 502) from exc
    except OSError as exc:
        raise InferenceError(f"inference server at {settings.INFERENCE_URL} unavailable: {exc}") from exc
    return {"adapter": name, "version": version.version, "outputs": outputs}


def adapter_generate(*, user: AbstractBaseUser, adapter: str, prompts: list[str], params: dict[str, Any],
                     stream: bool = False) -> dict[str, Any]:
    """Resolve `name@ref` to an sft version and generate on the inference server. Prompts must already be in
    the format the adapter was trained on (workers.training.data.sft_prompt). Returns {"adapter", "version",
    "outputs": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}]}, or with stream=True
    {"adapter", "version", "events": an iterator of the server's events} (see workers/inference/server.py)."""
    import urllib.error
    import urllib.request

    from api.registry.selectors import adapter_version_get

    name, _, ref = adapter.partition("@")
    version = adapter_version_get(user=user, name=name, ref=ref or "latest")
    if version.metadata.get("task") != "sft":
        raise RegistryInputError(f"{name}@{version.version} is a {version.metadata.get('task')!r} adapter; "
                                 "only sft adapters generate text", "model")
    body = json.dumps({"version": {"prefix": version.prefix, "files": version.files, "metadata": version.metadata},
                       "prompts": prompts, "params": params, "stream": stream}).encode()
    request = urllib.request.Request(f"{settings.INFERENCE_URL}/generate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        response = urllib.request.urlopen(request, timeout=300)
    except urllib.error.HTTPError as exc:
        message = exc.read().decode(errors="replace")[:500]
        raise InferenceError(f"inference server: {message}", 400 if exc.code == 400 else 502) from exc
    except OSError as exc:
        raise InferenceError(f"inference server at {settings.INFERENCE_URL} unavailable: {exc}") from exc
    result: dict[str, Any] = {"adapter": name, "version": version.version}
    if stream:
        def events() -> Iterator[dict[str, Any]]:
            with response:
                for line in response:
                    yield json.loads(line)

        result["events"] = events()
    else:
        with response:
            result["outputs"] = json.loads(response.read())["outputs"]
    return result


LORA_COMBINATIONS = ("linear", "ties", "dare_linear", "dare_ties", "svd", "cat", "magnitude_prune", "ties_svd",
                     "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
DENSITY_COMBINATIONS = {c for c in LORA_COMBINATIONS if c.startswith(("ties", "dare", "magnitude"))}
MERGE_COMBINATIONS = {"lora": LORA_COMBINATIONS, "lt_sft": ("sum",)}
MERGE_MAX_SOURCES = 16
MERGE_MAX_WEIGHT = 100.0


def _merge_sources_resolve(*, user: AbstractBaseUser, sources: list[dict[str, Any]]) -> list[AdapterVersion]:
    from api.registry.selectors import adapter_version_get

    versions = []
    for i, source in enumerate(sources):
        name, _, ref = str(source["version"]).partition("@")
        version = adapter_version_get(user=user, name=name, ref=ref or "latest")  # another user's: 404
        if version.archived_at is not None:
            raise RegistryInputError(f"{name}@{version.version} is archived; archived versions are not merged",
                                     f"sources[{i}].version")
        versions.append(version)
    return versions


def _merge_sources_check(versions: list[AdapterVersion]) -> str:
    """The sources must share base model, task, method (one that merges) and labels; returns the method."""
    first = versions[0].metadata
    for field in ("base_model", "task", "method"):
        values = {f"{v.adapter.name}@{v.version}": (v.metadata.get(field) or {}).get("id")
                  if field == "base_model" else v.metadata.get(field) for v in versions}
        if len(set(map(str, values.values()))) > 1:
            raise RegistryInputError(f"the sources have different {field.replace('_', ' ')}s: {values}; only "
                                     "versions of one base model, task and method merge", "sources")
    method = first.get("method")
    if method not in MERGE_COMBINATIONS:
        raise RegistryInputError(f"{method!r} versions do not merge; merging supports {sorted(MERGE_COMBINATIONS)}",
                                 "sources")
    labels = first.get("labels") or []
    for v in versions[1:]:
        if (v.metadata.get("labels") or []) != labels:
            raise RegistryInputError(f"the sources have different label sets: {versions[0].adapter.name}@"
                                     f"{versions[0].version} has {labels}, {v.adapter.name}@{v.version} has "
                                     f"{v.metadata.get('labels') or []}; only heads over the same labels, in the "
                                     "same order, can be averaged", "sources")
    return str(method)


def _merge_params_check(*, method: str, task: str, combination_type: str, weights: list[float],
                        density: float | None, svd_rank: int | None) -> None:
    allowed = MERGE_COMBINATIONS[method]
    if combination_type not in allowed:
        raise RegistryInputError(f"{method} versions merge with combination_type {list(allowed)}, not "
                                 f"{combination_type!r}", "combination_type")
    if density is not None and combination_type not in DENSITY_COMBINATIONS:
        raise RegistryInputError(f"density applies to {sorted(DENSITY_COMBINATIONS)}, not {combination_type!r}",
                                 "density")
    if combination_type in DENSITY_COMBINATIONS and density is None:
        raise RegistryInputError(f"combination_type {combination_type!r} needs a density (0 < density <= 1)",
                                 "density")
    if svd_rank is not None and not combination_type.endswith("svd"):
        raise RegistryInputError("svd_rank applies to the *svd combination types", "svd_rank")
    if task in HEADED_TASKS and sum(weights) <= 0:
        raise RegistryInputError(f"the weights sum to {sum(weights)}; a {task} merge averages the heads with the "
                                 "weights, which needs a positive sum", "sources")


def adapter_merge_create(*, user: AbstractBaseUser, adapter_name: str, sources: list[dict[str, Any]],
                         combination_type: str, density: float | None = None, svd_rank: int | None = None,
                         seed: int = 0) -> AdapterMerge:
    """Check a merge of the user's versions into the next version of `adapter_name` and queue it for a worker.

    Args:
        sources: [{"version": "name@ref", "weight": float}], 2 to MERGE_MAX_SOURCES of them.
        seed: the random seed of DARE's pruning, so a merge can be redone exactly."""
    from workers.tasks import adapter_merge_task

    if not ADAPTER_NAME.match(adapter_name):
        raise RegistryInputError("adapter names are 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a "
                                 "letter or digit", "name")
    if not 2 <= len(sources) <= MERGE_MAX_SOURCES:
        raise RegistryInputError(f"give 2 to {MERGE_MAX_SOURCES} sources", "sources")
    weights = [float(s.get("weight", 1.0)) for s in sources]
    for i, weight in enumerate(weights):
        if not math.isfinite(weight) or abs(weight) > MERGE_MAX_WEIGHT:
            raise RegistryInputError(f"weights are finite numbers from -{MERGE_MAX_WEIGHT} to {MERGE_MAX_WEIGHT}",
                                     f"sources[{i}].weight")
    versions = _merge_sources_resolve(user=user, sources=sources)
    method = _merge_sources_check(versions)
    _merge_params_check(method=method, task=versions[0].metadata.get("task", ""), combination_type=combination_type,
                        weights=weights, density=density, svd_rank=svd_rank)
    with transaction.atomic():
        merge = AdapterMerge.objects.create(
            owner=user, adapter_name=adapter_name, method=method, combination_type=combination_type,
            params={"density": density, "svd_rank": svd_rank, "seed": seed},
            sources=[{"version_id": v.id, "adapter": v.adapter.name, "version": v.version, "weight": w}
                     for v, w in zip(versions, weights, strict=True)])
        transaction.on_commit(lambda: adapter_merge_task.delay(merge.id))
    return merge


def adapter_merge_publish(*, merge: AdapterMerge, folder: Path, metadata: dict[str, Any]) -> AdapterVersion:
    """Store a merge's folder as the next version of its adapter. Idempotent on the merge: a second call returns
    the version the first one made."""
    with transaction.atomic():
        merge = AdapterMerge.objects.select_for_update().get(id=merge.id)
        if merge.result_id is not None:
            return merge.result  # type: ignore[return-value]
        version = _version_store(user=merge.owner, name=merge.adapter_name, folder=folder, metadata=metadata)
        merge.result = version
        merge.save(update_fields=["result"])
        return version
