import io
import json
import logging
import logging.config
import threading
from collections.abc import Iterator

import pytest

from api.ops.logs import job_id_var, job_log_context, logging_config


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger wired exactly as settings.LOGGING wires the root logger, writing to a buffer."""
    config = logging_config(log_format=request.param, level="INFO")
    config["handlers"]["console"]["stream"] = stream = io.StringIO()
    config["root"] = {"handlers": []}
    config["loggers"] = {"foundry.test": {"handlers": ["console"], "level": "INFO", "propagate": False}}
    logging.config.dictConfig(config)
    yield logging.getLogger("foundry.test"), stream
    logging.getLogger("foundry.test").handlers.clear()


@pytest.mark.parametrize("captured", ["json"], indirect=True)
def test_json_lines_carry_the_job_id_only_inside_the_job(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("before")
    with job_log_context(42):
        logger.warning("step %d done", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], r.get("job_id")) for r in lines] == [
        ("before", None), ("step 3 done", 42), ("failed", 42), ("after", None)]
    assert lines[1]["level"] == "WARNING" and lines[1]["logger"] == "foundry.test"
    assert lines[1]["time"].endswith("+00:00") and isinstance(lines[1]["process"], int)
    assert "ValueError: boom" in lines[2]["exception"]
    assert job_id_var.get() is None


@pytest.mark.parametrize("captured", ["json"], indirect=True)
def test_heartbeat_threads_and_celery_received_lines_name_their_job(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    # the runner's lease heartbeat runs in a thread named heartbeat-<job id>, outside the task's context
    thread = threading.Thread(target=lambda: logger.warning("heartbeat failed"), name="heartbeat-7")
    thread.start()
    thread.join()
    # Celery logs "Task ... received" before the task starts, with the task's name and args in `data`
    received = {"id": "abc", "name": "workers.tasks.job_train", "args": "(12,)", "kwargs": "{}", "eta": None}
    logger.info("Task %(name)s[%(id)s] received", received, extra={"data": received})
    other = {**received, "name": "workers.tasks.dataset_validate_task", "args": "(5,)"}
    logger.info("Task %(name)s[%(id)s] received", other, extra={"data": other})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r.get("job_id") for r in lines] == [7, 12, None]
    assert lines[1]["message"] == "Task workers.tasks.job_train[abc] received"


@pytest.mark.parametrize("captured", ["text"], indirect=True)
def test_text_lines_tag_the_job(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    with job_log_context(5):
        logger.info("training")
    logger.info("idle")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO foundry.test [job 5]: training")
    assert second.endswith("INFO foundry.test: idle")


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT='xml' is not one of json, text"):
        logging_config(log_format="xml", level="INFO")
