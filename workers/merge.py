"""Merging registry versions into a new version: what the merge task runs (api/registry/services.py checked the
sources before queueing: one base model, task, method and label set, none archived, all the owner's).

LoRA: peft's `add_weighted_adapter` (linear, TIES, DARE, SVD, cat, ...) on the sources loaded into one model.
peft refuses adapters that carry `modules_to_save` (the classifier head), so the sources load without it and the
heads are merged here: sum(w_i * head_i) / sum(w_i), tensor by tensor, under the keys peft saved them with.

LT-SFT (Ansell et al., arXiv:2110.07560): the sparse differences compose by addition, theta_0 + sum(w_i * phi_i),
kept sparse (the union of the indices); the dense heads are averaged with the same weights.

DARE prunes at random: the merge seeds torch with its `seed`, so it can be redone exactly."""

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from django.utils import timezone
from rest_framework.exceptions import APIException
from safetensors.torch import load_file, save_file

from api.registry.models import AdapterMerge, AdapterVersion, MergeStatus
from api.registry.services import adapter_merge_publish
from storage import s3
from workers.base_models import base_model_get, model_load, tokenizer_load

log = logging.getLogger(__name__)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MERGED = "merged"


class MergeInputError(ValueError):
    """The sources cannot be merged as asked (peft refused, ranks differ, heads differ): a user error."""


def heads_average(heads: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum(w_i * head_i) / sum(w_i) for every tensor name; every source must have the same names and shapes."""
    names = set(heads[0])
    for i, head in enumerate(heads[1:], start=1):
        if set(head) != names or any(head[k].shape != heads[0][k].shape for k in names):
            raise MergeInputError(f"source {i}'s head tensors {sorted(head)} differ from source 0's {sorted(names)}")
    total = sum(weights)
    return {k: torch.stack([w * h[k].float() for w, h in zip(weights, heads, strict=True)]).sum(0).to(
        heads[0][k].dtype) / total for k in sorted(names)}


def lora_merge(*, folders: list[Path], weights: list[float], combination_type: str, density: float | None,
               svd_rank: int | None, base: Any, out: Path) -> None:
    """Merge peft LoRA folders with add_weighted_adapter into `out`, a peft folder of one LoRA adapter.

    Args:
        base: the base model with its task head (the head's weights are replaced by the averaged heads).
    """
    import peft
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    model, names, heads, original = None, [], [], None
    for i, folder in enumerate(folders):
        config = peft.PeftConfig.from_pretrained(str(folder))
        if config.peft_type != peft.PeftType.LORA:
            raise MergeInputError(f"source {i} is a {config.peft_type} adapter, not LoRA")
        if config.use_dora:
            raise MergeInputError(f"source {i} uses DoRA, which peft's add_weighted_adapter does not merge")
        original = original or config.to_dict()
        config.modules_to_save, config.task_type = None, None  # a plain PeftModel: heads are merged apart
        tensors = load_file(str(folder / WEIGHTS_FILE))
        heads.append({k: v for k, v in tensors.items() if ".lora_" not in k})
        name = f"source{i}"
        if model is None:
            model = peft.PeftModel(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        loaded = set_peft_model_state_dict(model, {k: v for k, v in tensors.items() if ".lora_" in k},
                                           adapter_name=name)
        unexpected: list[str] = list(getattr(loaded, "unexpected_keys", []))  # peft's result is untyped
        if unexpected:
            raise MergeInputError(f"source {i} has LoRA tensors the base model does not: {unexpected[:5]}")
        names.append(name)
    assert model is not None and original is not None
    try:
        model.add_weighted_adapter(names, weights, MERGED, combination_type=combination_type, density=density,
                                   svd_rank=svd_rank)
    except (ValueError, TypeError) as exc:
        raise MergeInputError(f"peft refused the merge: {exc}") from exc
    tensors = {k: v.contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=MERGED).items()}
    tensors.update(heads_average(heads, weights))
    config = model.peft_config[MERGED].to_dict()
    config.update(task_type=original["task_type"], modules_to_save=original["modules_to_save"], inference_mode=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=list))


def lt_sft_sum(*, folders: list[Path], weights: list[float], out: Path) -> None:
    """theta_0 + sum(w_i * phi_i) as one LT-SFT folder (the layout workers.methods.lt_sft.model.save writes)."""
    from workers.methods.lt_sft.model import Diff, diff_add, diff_read

    total: Diff = {}
    heads = []
    for folder, weight in zip(folders, weights, strict=True):
        sparse, dense = diff_read(str(folder))
        total = diff_add(total, {name: (indices, values * weight) for name, (indices, values) in sparse.items()})
        heads.append(dense)
    tensors: dict[str, torch.Tensor] = {}
    for name, (indices, values) in total.items():
        tensors[f"sparse/{name}/indices"], tensors[f"sparse/{name}/values"] = indices, values.contiguous()
    if any(heads):
        tensors.update({f"dense/{k}": v for k, v in heads_average(heads, weights).items()})
    config = json.loads((folders[0] / CONFIG_FILE).read_text())
    config["k"] = sum(int(indices.numel()) for indices, _ in total.values())
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def _download(version: AdapterVersion, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for entry in version.files:
        if entry["name"] in (CONFIG_FILE, WEIGHTS_FILE):
            s3.download_file(version.prefix + entry["name"], folder / entry["name"], sha256=entry["sha256"])
    return folder


def _lineage(merge: AdapterMerge, versions: list[AdapterVersion], out: Path) -> dict[str, Any]:
    import peft
    import transformers

    from workers.training.runner import code_version

    first = versions[0].metadata
    config = json.loads((out / CONFIG_FILE).read_text())
    return {
        "format": 1,
        "source": "merge",
        "adapter": merge.adapter_name,
        "merge_id": merge.id,
        "task": first.get("task"),
        "base_model": first.get("base_model"),
        "method": merge.method,
        "method_config": config if merge.method == "lora" else first.get("method_config"),
        "loading": first.get("loading"),
        "labels": first.get("labels") or [],
        "prompt_format": first.get("prompt_format"),
        "merge": {"combination_type": merge.combination_type, **merge.params},
        "parents": [{"adapter": v.adapter.name, "version": v.version, "weight": s["weight"],
                     "sha256": next((f["sha256"] for f in v.files if f["name"] == WEIGHTS_FILE), None)}
                    for v, s in zip(versions, merge.sources, strict=True)],
        "hyperparameters": {},
        "metrics": {},
        "code_version": code_version(),
        "libraries": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "peft": peft.__version__},
        "created_at": timezone.now().isoformat(),
    }


def _merge(merge: AdapterMerge, tmp: Path) -> AdapterVersion:
    by_id = AdapterVersion.objects.select_related("adapter").in_bulk([s["version_id"] for s in merge.sources])
    versions = [by_id[s["version_id"]] for s in merge.sources]
    weights = [float(s["weight"]) for s in merge.sources]
    folders = [_download(v, tmp / f"source{i}") for i, v in enumerate(versions)]
    out = tmp / "merged"
    with torch.random.fork_rng():
        torch.manual_seed(merge.params.get("seed") or 0)
        if merge.method == "lt_sft":
            lt_sft_sum(folders=folders, weights=weights, out=out)
        else:
            metadata = versions[0].metadata
            entry = base_model_get(metadata["base_model"]["id"])
            base = model_load(entry, task=metadata["task"], vocab_size=len(tokenizer_load(entry)),
                              labels=metadata.get("labels") or None)
            lora_merge(folders=folders, weights=weights, combination_type=merge.combination_type,
                       density=merge.params.get("density"), svd_rank=merge.params.get("svd_rank"), base=base, out=out)
    return adapter_merge_publish(merge=merge, folder=out, metadata=_lineage(merge, versions, out))


def _finish(merge_id: int, *, status: str, error: dict[str, str] | None = None) -> None:
    AdapterMerge.objects.filter(id=merge_id, status=MergeStatus.RUNNING).update(
        status=status, error=error, finished_at=timezone.now())


def adapter_merge_run(*, merge_id: int) -> None:
    """Claim a queued merge, merge its sources and publish the result as a new version. User errors fail the
    merge with `invalid_config`, storage trouble with `storage_error`, anything else with `worker_error`."""
    claimed = AdapterMerge.objects.filter(id=merge_id, status=MergeStatus.QUEUED).update(
        status=MergeStatus.RUNNING, started_at=timezone.now())
    if claimed != 1:
        log.warning("merge %s: not queued any more; a second delivery is ignored", merge_id)
        return
    merge = AdapterMerge.objects.select_related("owner").get(id=merge_id)
    try:
        with tempfile.TemporaryDirectory(prefix=f"foundry-merge-{merge_id}-") as tmp:
            _merge(merge, Path(tmp))
    except MergeInputError as exc:
        _finish(merge_id, status=MergeStatus.FAILED, error={"code": "invalid_config", "message": str(exc)[:2000]})
    except APIException as exc:  # e.g. over the storage quota
        _finish(merge_id, status=MergeStatus.FAILED, error={"code": str(exc.default_code), "message": str(exc)})
    except s3.StorageError as exc:
        _finish(merge_id, status=MergeStatus.FAILED, error={"code": "storage_error", "message": str(exc)[:2000]})
    except Exception as exc:
        log.exception("merge %s failed", merge_id)
        _finish(merge_id, status=MergeStatus.FAILED, error={"code": "worker_error",
                                                            "message": f"{type(exc).__name__}: {exc}"[:2000]})
    else:
        _finish(merge_id, status=MergeStatus.SUCCEEDED)
