"""Where things live in the bucket (DESIGN.md, "Storage keys")."""


def dataset(sha256: str) -> str:
    return f"datasets/{sha256}"


def checkpoint(job_id: int, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/{step}/"


def adapter_version(owner_id: int, name: str, version: int) -> str:
    return f"adapters/{owner_id}/{name}/{version}/"
