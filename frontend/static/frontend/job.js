"use strict";
(() => {
  const base = `/api/v1/jobs/${JOB_ID}`;
  const $ = (id) => document.getElementById(id);
  const canvas = $("loss-chart");
  const series = {loss: new Map(), eval_loss: new Map(), eval_accuracy: new Map()};
  let lastStep = -1;
  let lastSeq = 0;
  let configShown = false;
  let checkpointsAt = 0;

  const chart = new Chart(canvas, {
    type: "line",
    data: {datasets: [
      {label: "training loss", data: [], borderColor: "#1f5fbf", backgroundColor: "#1f5fbf", pointRadius: 2, yAxisID: "y"},
      {label: "eval loss", data: [], borderColor: "#b3261e", backgroundColor: "#b3261e", pointRadius: 4, yAxisID: "y"},
      {label: "eval accuracy", data: [], borderColor: "#1d7a3a", backgroundColor: "#1d7a3a", pointRadius: 4, yAxisID: "y1"},
    ]},
    options: {
      responsive: true, maintainAspectRatio: false, animation: false, parsing: false,
      interaction: {mode: "nearest", intersect: false},
      scales: {
        x: {type: "linear", title: {display: true, text: "step"}, ticks: {precision: 0}},
        y: {title: {display: true, text: "loss"}},
        y1: {position: "right", min: 0, max: 1, title: {display: true, text: "accuracy"}, grid: {drawOnChartArea: false}},
      },
    },
  });

  function redraw() {
    const keys = ["loss", "eval_loss", "eval_accuracy"];
    keys.forEach((k, i) => {
      chart.data.datasets[i].data = [...series[k].entries()].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({x, y}));
    });
    chart.update();
    const points = keys.reduce((n, k) => n + series[k].size, 0);
    canvas.dataset.points = String(points);
    const last = (m) => (m.size ? [...m.entries()].sort((a, b) => b[0] - a[0])[0] : null);
    const [step, loss] = last(series.loss) || [null, null];
    const acc = last(series.eval_accuracy);
    $("metrics-text").textContent = step === null ? "No metrics yet." :
      `step ${step}: training loss ${fmtNumber(loss)}${acc ? `; eval accuracy ${fmtNumber(acc[1])} at step ${acc[0]}` : ""}`;
  }

  async function metrics() {
    // Eval rows share a step with the training row logged just before them: re-read the last step.
    const {ok, data} = await api("GET", `${base}/metrics?after_step=${Math.max(-1, lastStep - 1)}`);
    if (!ok) return;
    for (const row of data.data) {
      for (const k of Object.keys(series)) if (row[k] !== null && row[k] !== undefined) series[k].set(row.step, row[k]);
      lastStep = Math.max(lastStep, row.step);
    }
    redraw();
  }

  async function events() {
    const {ok, data} = await api("GET", `${base}/events?after=${lastSeq}`);
    if (!ok) return;
    const log = $("events");
    for (const ev of data.data) {
      log.append(el("li", {class: ev.level, "data-type": ev.type},
        el("span", {class: "muted", text: `${new Date(ev.created_at).toLocaleTimeString()} `}),
        el("strong", {text: ev.type}), ` ${ev.message}`));
    }
    lastSeq = data.last_seq;
    if (data.data.length) log.scrollTop = log.scrollHeight;
  }

  async function checkpoints() {
    const {ok, data} = await api("GET", `${base}/checkpoints`);
    if (!ok || !data.data.length) return;
    $("checkpoints").querySelector("tbody").replaceChildren(...data.data.map((c) => el("tr", {},
      el("td", {class: "num", text: c.step}), el("td", {class: "num", text: fmtNumber(c.epoch)}),
      el("td", {text: `${c.files.length} files, ${fmtBytes(c.files.reduce((n, f) => n + (f.size || 0), 0))}`}),
      el("td", {text: fmtTime(c.created_at)}))));
  }

  const settings = (obj) => Object.entries(obj).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");

  function showConfig(job) {
    const rows = {"base model": job.base_model, task: job.task, method: job.method,
      dataset: el("a", {href: `/datasets/${job.dataset}`, text: `#${job.dataset}`}),
      "validation set": job.validation_dataset ? el("a", {href: `/datasets/${job.validation_dataset}`, text: `#${job.validation_dataset}`}) : "none",
      "method config": el("code", {text: settings(job.method_config)}),
      hyperparameters: el("code", {text: settings(job.hyperparameters)}), priority: job.priority,
      created: fmtTime(job.created_at)};
    $("config").replaceChildren(...Object.entries(rows).flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {}, v)]));
  }

  function showJob(job) {
    $("status").replaceChildren(badge(job.status));
    document.body.dataset.status = job.status;
    const {step, total_steps: total, epoch, eta_seconds: eta} = job.progress;
    $("progress").max = total || 1;
    $("progress").value = job.status === "succeeded" ? (total || 1) : step;
    let text;
    if (job.status === "queued") {
      text = `Queued: position ${job.queue_position ?? "?"}` +
        (job.queue_eta_seconds !== null ? `, starts in about ${fmtSeconds(job.queue_eta_seconds)}` : "");
    } else if (job.status === "validating_files") {
      text = "Waiting for the dataset's validation.";
    } else {
      text = total ? `Step ${step} of ${total}, epoch ${fmtNumber(epoch)}` : job.status;
      if (!FINAL.has(job.status) && eta !== null) text += `, about ${fmtSeconds(eta)} left`;
    }
    if (job.attempts > 1) text += ` (attempt ${job.attempts})`;
    $("progress-text").textContent = text;
    $("error").textContent = job.error ? `${job.error.code}: ${job.error.message}${job.error.param ? ` (${job.error.param})` : ""}` : "";
    if (job.result) {
      $("result").replaceChildren("Produced ", el("a", {id: "result-link",
        href: `/adapters/${encodeURIComponent(job.result.adapter)}#v${job.result.version}`, text: job.result.ref}), ".");
    }
    $("cancel").disabled = FINAL.has(job.status) || job.cancel_requested;
    if (job.cancel_requested && !FINAL.has(job.status)) $("cancel").textContent = "Cancelling…";
    if (!configShown) { showConfig(job); configShown = true; }
  }

  $("cancel").addEventListener("click", async () => {
    $("cancel-error").textContent = "";
    if (!window.confirm(`Cancel job #${JOB_ID}? A running job stops within one step.`)) return;
    $("cancel").disabled = true;
    const {ok, data} = await api("POST", `${base}/cancel`);
    if (ok) showJob(data);
    else { $("cancel-error").textContent = data.error.message; $("cancel").disabled = false; }
  });

  pollLoop(async () => {
    const {ok, data: job} = await api("GET", base);
    if (!ok) return true;
    showJob(job);
    await Promise.all([metrics(), events()]);
    const now = Date.now();
    if (FINAL.has(job.status) || now - checkpointsAt > 5000) { checkpointsAt = now; await checkpoints(); }
    return !FINAL.has(job.status);
  }, 1500);
})();
