import pytest

from api.ops.routing import (
    GIB,
    GpuQueue,
    RoutingConfigError,
    gpu_queues_parse,
    memory_fits_any_worker,
    train_queue_for,
    train_queues,
)

CLASSES = gpu_queues_parse("train-80g:80, train-24g:24,train-40g:40.5")


def test_classes_are_parsed_and_sorted_smallest_first() -> None:
    assert CLASSES == (GpuQueue("train-24g", 24 * GIB), GpuQueue("train-40g", int(40.5 * GIB)),
                       GpuQueue("train-80g", 80 * GIB))
    assert gpu_queues_parse("") == () and gpu_queues_parse(" , ") == ()


@pytest.mark.parametrize("raw, message", [
    ("train-24g", "is not 'queue-name:GiB'"),
    ("train 24g:24", "is not 'queue-name:GiB'"),
    ("default:24", "'default' is the light queue"),
    ("train-24g:lots", "'lots' is not a number of GiB"),
    ("train-24g:0", "must be above 0 GiB"),
    ("a:24,a:80", "queue 'a' is listed twice"),
])
def test_bad_gpu_queues_name_the_variable_and_the_item(raw: str, message: str) -> None:
    with pytest.raises(RoutingConfigError, match="GPU_QUEUES") as error:
        gpu_queues_parse(raw)
    assert message in str(error.value)


@pytest.mark.parametrize("peak, queue", [
    (None, "train"),                       # not estimated: the default train queue
    (1, "train-24g"),
    (24 * GIB, "train-24g"),               # exactly fits
    (24 * GIB + 1, "train-40g"),           # one byte over goes to the next class up
    (41 * GIB, "train-80g"),
    (200 * GIB, "train-80g"),              # bigger than every class (refused at submission): the largest
])
def test_a_job_goes_to_the_smallest_class_its_memory_fits(peak: int | None, queue: str) -> None:
    assert train_queue_for(peak, classes=CLASSES) == queue


def test_without_gpu_classes_everything_goes_to_train() -> None:
    assert train_queue_for(None, classes=()) == "train"
    assert train_queue_for(500 * GIB, classes=()) == "train"
    assert train_queues(classes=()) == ["train"]
    assert train_queues(classes=CLASSES) == ["train", "train-24g", "train-40g", "train-80g"]


def test_memory_fits_any_worker_reports_the_largest_class() -> None:
    assert memory_fits_any_worker(80 * GIB, classes=CLASSES) == (True, 80 * GIB)
    assert memory_fits_any_worker(80 * GIB + 1, classes=CLASSES) == (False, 80 * GIB)
    assert memory_fits_any_worker(None, classes=CLASSES) == (True, 80 * GIB)
    assert memory_fits_any_worker(10**15, classes=()) == (True, 0)  # no classes: no declared bound


def test_settings_default_has_no_gpu_classes() -> None:
    assert train_queue_for(10**15) == "train" and memory_fits_any_worker(10**15) == (True, 0)
