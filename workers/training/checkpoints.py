"""Checkpoints in S3 that hold no pickle.

The Trainer writes its checkpoint locally (adapter safetensors, trainer_state.json, and
optimizer/scheduler/RNG states as torch pickles). Before upload, each pickle is re-encoded
as a safetensors file of its tensors plus a JSON file of the rest; a COMPLETE.json marker
with every file's sha256 is written last, so a checkpoint without it never counts. On
resume the files are verified and turned back into the local layout the Trainer reads."""

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from storage import s3

MARKER = "COMPLETE.json"
PICKLED = (".pt", ".pth")
SKIP = {"training_args.bin", "README.md"}


def state_encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able mirror of obj; tensors and arrays go into `tensors` by key."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return {"__npscalar__": [obj.dtype.str, obj.item()]}
    if isinstance(obj, dict):
        return {"__dict__": [[state_encode(k, tensors), state_encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [state_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [state_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def state_decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [state_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__npscalar__" in obj:
        dtype, value = obj["__npscalar__"]
        return np.dtype(dtype).type(value)
    if "__tuple__" in obj:
        return tuple(state_decode(v, tensors) for v in obj["__tuple__"])
    return {state_decode(k, tensors): state_decode(v, tensors) for k, v in obj["__dict__"]}


def _encode_file(path: Path, out: Path) -> list[Path]:
    from transformers.trainer_pt_utils import safe_globals  # numpy arrays and dtypes, as the Trainer allows

    # Our own file, written a moment ago by this process's Trainer; weights_only keeps it tensors-and-data.
    with safe_globals():
        state = torch.load(path, weights_only=True, map_location="cpu")
    tensors: dict[str, torch.Tensor] = {}
    document = {"original": path.name, "state": state_encode(state, tensors)}
    stem = out / path.stem
    save_file(tensors, f"{stem}.state.safetensors")
    Path(f"{stem}.state.json").write_text(json.dumps(document))
    return [Path(f"{stem}.state.safetensors"), Path(f"{stem}.state.json")]


def checkpoint_upload(*, local_dir: Path, prefix: str) -> list[dict[str, Any]]:
    """Upload a Trainer checkpoint folder under prefix, marker last. Returns the file list."""
    with tempfile.TemporaryDirectory(prefix="foundry-ckpt-") as tmp:
        staged: list[Path] = []
        for path in sorted(local_dir.iterdir()):
            if not path.is_file() or path.name in SKIP:
                continue
            staged += _encode_file(path, Path(tmp)) if path.suffix in PICKLED else [path]
        files = []
        for path in staged:
            digest = s3.put_file(prefix + path.name, path)
            files.append({"name": path.name, "size": path.stat().st_size, "sha256": digest})
    s3.put_bytes(prefix + MARKER, json.dumps({"files": files}).encode())
    return files


def checkpoint_download(*, prefix: str, files: list[dict[str, Any]], local_dir: Path) -> Path:
    """Fetch a complete checkpoint (every file checked against its sha256) into the Trainer's layout."""
    local_dir.mkdir(parents=True, exist_ok=True)
    for entry in files:
        s3.download_file(prefix + entry["name"], local_dir / entry["name"], sha256=entry["sha256"])
    for document_path in sorted(local_dir.glob("*.state.json")):
        document = json.loads(document_path.read_text())
        tensors_path = document_path.with_name(document_path.name.replace(".state.json", ".state.safetensors"))
        state = state_decode(document["state"], load_file(tensors_path))
        torch.save(state, local_dir / Path(document["original"]).name)
        document_path.unlink()
        tensors_path.unlink()
    return local_dir
