"""The whole web UI path a user takes: sign in, see a bad file's line errors, upload a good one, start a LoRA job
(after a field error shown beside its field), watch the loss chart fill, promote the version, try it, download it."""

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tests.conftest import SENTIMENT, jsonl

PASSWORD = "correct horse battery staple"
BAD_ROWS = [{"text": "fine", "label": "pos"}, {"text": "no label here"}, "{not json", {"text": " ", "label": "neg"}]


def _drop_file(page: Any, selector: str, path: Path) -> None:
    """A real drop event carrying the file, as the browser sends when a file is dragged onto the zone."""
    transfer = page.evaluate_handle(
        "([name, text]) => { const dt = new DataTransfer(); dt.items.add(new File([text], name)); return dt; }",
        [path.name, path.read_text()])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def _upload(page: Any, url: str, path: Path, name: str, *, drop: bool = False) -> int:
    page.goto(f"{url}/datasets")
    if drop:
        _drop_file(page, "#drop", path)
    else:
        page.set_input_files("#file-input", str(path))
    expect(page.locator("#drop-text")).to_contain_text(path.name)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Tokenizer for the length stats").select_option("tiny-bert")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/datasets/\d+$"))
    expect(page.locator("#dataset-status")).not_to_have_text("validating", timeout=30_000)
    return int(page.url.rsplit("/", 1)[1])


def test_upload_train_promote_try_and_download(live_server: Any, worker: object, inference_url: str, settings: Any,
                                               page: Any, shot: Any, tmp_path: Path) -> None:
    settings.INFERENCE_URL = inference_url
    get_user_model().objects.create_user("alice", password=PASSWORD)
    url = live_server.url

    # Sign in: a wrong password is refused on the form, the right one lands on the jobs page.
    page.goto(f"{url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_be_visible()
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/jobs")
    shot("01-jobs-empty")

    # An API token: shown once, listed, revoked.
    page.goto(f"{url}/tokens")
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#token-value")).to_have_value(re.compile(r"^af_"))
    shot("02-token-created")
    page.get_by_role("button", name="Revoke token laptop").click()
    expect(page.locator(".messages")).to_contain_text("revoked")
    expect(page.locator("#token-value")).to_have_count(0)

    # A bad file: every bad line with its field.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(BAD_ROWS))
    _upload(page, url, bad, "broken")
    expect(page.locator("#dataset-status")).to_have_text("invalid")
    problems = page.locator("#problems tbody tr")
    expect(problems).to_have_count(4)
    expect(problems.nth(0)).to_have_text(re.compile(r"^2\s*label\s*missing field 'label'"))
    expect(problems.nth(1)).to_have_text(re.compile(r"^3\s*–\s*invalid JSON"))
    expect(problems.nth(2)).to_have_text(re.compile(r"^4\s*text\s*empty 'text'"))
    expect(problems.nth(3)).to_contain_text("only one label")
    shot("03-dataset-invalid")

    # A good file, dropped onto the zone; its stats as charts and its first rows.
    good = tmp_path / "sentiment-train.jsonl"
    good.write_bytes(jsonl(SENTIMENT))
    train_id = _upload(page, url, good, "sentiment-train", drop=True)
    expect(page.locator("#dataset-status")).to_have_text("ready")
    expect(page.locator("#label-chart")).to_have_attribute("data-points", "2")
    expect(page.locator("#length-chart")).to_have_attribute("data-points", "5")
    expect(page.locator("#histogram-chart")).not_to_have_attribute("data-points", "0")
    expect(page.locator("#preview tbody tr")).to_have_count(10)
    shot("04-dataset-ready")
    shot("04-dataset-ready-phone", phone=True)
    dev = tmp_path / "sentiment-dev.jsonl"
    dev.write_bytes(jsonl(SENTIMENT[:10]))
    dev_id = _upload(page, url, dev, "sentiment-dev")
    page.goto(f"{url}/datasets")
    expect(page.locator("#datasets tbody tr")).to_have_count(3)
    shot("05-datasets")
    page.goto(f"{url}/datasets?page_size=2")  # pages: two rows, then the third behind "Next"
    expect(page.locator("#datasets tbody tr")).to_have_count(2)
    expect(page.locator("#datasets-pager")).to_contain_text("1–2 of 3")
    page.locator("#datasets-pager").get_by_role("link", name="Next →").click()
    expect(page.locator("#datasets tbody tr")).to_have_count(1)
    expect(page.locator("#datasets-pager")).to_contain_text("3–3 of 3")
    expect(page).to_have_url(re.compile(r"page=2"))

    # New fine-tune: a value out of bounds comes back as a 400 and is shown beside its field.
    page.goto(f"{url}/datasets/{train_id}")
    page.get_by_role("link", name="Fine-tune on this dataset").click()
    page.wait_for_url(re.compile(r"/jobs/new"))
    page.get_by_label("Base model").select_option("tiny-bert")
    expect(page.get_by_label("Training dataset")).to_have_value(str(train_id))
    page.get_by_label("Validation dataset").select_option(str(dev_id))
    page.get_by_label("Adapter name").fill("e2e-sentiment")
    expect(page.get_by_label("PEFT method")).to_have_value("lora")
    expect(page.locator('[data-param="method_config.r"] .help')).to_contain_text("≤ 256")
    page.locator("#f-method_config-r").fill("999")
    page.locator("#f-hyperparameters-epochs").fill("5")
    page.locator("#f-hyperparameters-learning_rate").fill("0.01")
    page.locator("#f-hyperparameters-batch_size").fill("8")
    page.get_by_role("button", name="Start fine-tune").click()
    expect(page.locator("#f-method_config-r-error")).to_contain_text("256")
    expect(page.locator("#f-method_config-r")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-method_config-r")).to_be_focused()
    shot("06-new-job-field-error")
    page.locator("#f-method_config-r").fill("4")
    # the estimate follows the form: 5 epochs of 40 rows in batches of 8 is 25 optimizer steps
    # (the web process's first estimate imports the model code: seconds on a busy machine)
    expect(page.locator("#estimate")).to_contain_text("25 steps", timeout=60_000)
    expect(page.locator("#estimate")).to_contain_text("peak memory about")
    shot("06-new-job-estimate")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])

    # The job page: the loss chart fills while it trains, then it succeeds and links its version.
    expect(page.locator("#loss-chart")).not_to_have_attribute("data-points", "0", timeout=60_000)
    expect(page.locator("body[data-status=succeeded]")).to_have_count(1, timeout=90_000)
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "35")  # 25 losses, 5 eval losses, 5 accs
    expect(page.locator("#events li[data-type=succeeded]")).to_have_count(1)
    expect(page.locator("#cancel")).to_be_disabled()
    shot("07-job")
    shot("07-job-phone", phone=True)
    page.goto(f"{url}/jobs")
    expect(page.locator(f'#jobs tr[data-job="{job_id}"]')).to_contain_text("succeeded")
    shot("08-jobs")

    # The registry: promote v1 to production, compare, download, try it.
    page.goto(f"{url}/jobs/{job_id}")
    page.get_by_role("link", name="e2e-sentiment@1").click()
    page.wait_for_url(re.compile(r"/adapters/e2e-sentiment"))
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    page.get_by_label("Alias", exact=True).fill("production")
    page.get_by_label("Version", exact=True).select_option("1")
    page.get_by_role("button", name="Move alias").click()
    expect(page.locator('#alias-list li[data-alias="production"]')).to_contain_text("v1")
    expect(page.locator('#versions tr[data-version="1"]')).to_contain_text("production")
    expect(page.locator("#alias-history li")).to_have_count(1)
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("#compare-result")).to_contain_text("same lineage")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download version 1 as a zip").click()
    archive = tmp_path / "e2e-sentiment-v1.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors", "foundry.json"} <= set(zf.namelist())
        assert json.loads(zf.read("foundry.json"))["labels"] == ["neg", "pos"]

    page.get_by_label("Version or alias").select_option("production")
    page.get_by_label("Inputs, one per line").fill("great movie number 3\nawful movie number 3")
    page.get_by_role("button", name="Run").click()
    labels = page.locator("#play-table .play-label")
    expect(labels).to_have_count(2)
    assert {labels.nth(0).inner_text(), labels.nth(1).inner_text()} <= {"neg", "pos"}
    expect(page.locator("#v1")).to_have_attribute("open", "")  # the job's link points at #v1: its lineage is open
    shot("09-registry")
    shot("09-registry-phone", phone=True)
    page.goto(f"{url}/adapters")
    expect(page.locator("#adapters tbody tr")).to_have_count(1)
    shot("10-adapters")

    page.get_by_role("button", name=re.compile("Sign out")).click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
