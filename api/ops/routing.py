"""Which train queue a job goes to. Pure functions of the job's estimated peak memory and GPU_QUEUES.

GPU_QUEUES="train-24g:24,train-80g:80" declares one Celery queue per GPU class with the memory (GiB)
one of its devices offers. A job whose estimate is known goes to the smallest class that holds it; a
job without an estimate, or any job when no class is configured, goes to `train` (as before)."""

import re
from dataclasses import dataclass

GIB = 1024**3
DEFAULT_TRAIN_QUEUE = "train"
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RoutingConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GpuQueue:
    name: str
    memory_bytes: int


def gpu_queues_parse(raw: str, *, variable: str = "GPU_QUEUES") -> tuple[GpuQueue, ...]:
    """`name:GiB,...` -> classes sorted by memory, smallest first. Bad entries name the variable and item."""
    classes: list[GpuQueue] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, size = item.partition(":")
        name = name.strip()
        if not sep or not QUEUE_NAME.match(name) or name == "default":
            raise RoutingConfigError(f"{variable}: {item!r} is not 'queue-name:GiB' (names: letters, digits, "
                                     "'.', '_', '-'; 'default' is the light queue)")
        try:
            gib = float(size)
        except ValueError:
            raise RoutingConfigError(f"{variable}: {item!r}: {size!r} is not a number of GiB") from None
        if not 0 < gib <= 1024 * 1024:
            raise RoutingConfigError(f"{variable}: {item!r}: the memory must be above 0 GiB")
        if any(c.name == name for c in classes):
            raise RoutingConfigError(f"{variable}: queue {name!r} is listed twice")
        classes.append(GpuQueue(name, int(gib * GIB)))
    return tuple(sorted(classes, key=lambda c: (c.memory_bytes, c.name)))


def _classes(classes: tuple[GpuQueue, ...] | None) -> tuple[GpuQueue, ...]:
    if classes is not None:
        return classes
    from django.conf import settings

    return tuple(settings.GPU_QUEUES)


def train_queue_for(peak_memory_bytes: int | None, *, classes: tuple[GpuQueue, ...] | None = None) -> str:
    """The queue for a job needing `peak_memory_bytes` (None: not estimated).

    A job bigger than every class (refused at submission, so only after GPU_QUEUES shrank) goes to the
    largest class, where the engine's out-of-memory retry halves its micro-batch."""
    classes = _classes(classes)
    if not classes or peak_memory_bytes is None:
        return DEFAULT_TRAIN_QUEUE
    for gpu in classes:
        if peak_memory_bytes <= gpu.memory_bytes:
            return gpu.name
    return classes[-1].name


def memory_fits_any_worker(peak_memory_bytes: int | None, *,
                           classes: tuple[GpuQueue, ...] | None = None) -> tuple[bool, int]:
    """(fits, the largest class's bytes). With no GPU classes configured there is no declared bound:
    (True, 0). An unknown estimate (None) always fits."""
    classes = _classes(classes)
    if not classes:
        return True, 0
    largest = classes[-1].memory_bytes
    return peak_memory_bytes is None or peak_memory_bytes <= largest, largest


def train_queues(*, classes: tuple[GpuQueue, ...] | None = None) -> list[str]:
    """Every queue a training job may be sent to."""
    return [DEFAULT_TRAIN_QUEUE, *(c.name for c in _classes(classes))]
