"use strict";
(async () => {
  const form = document.getElementById("job-form");
  const $ = (id) => document.getElementById(id);
  const query = new URLSearchParams(window.location.search);
  const hpForm = schemaForm(JSON.parse($("hp-schema").textContent), "hyperparameters");
  $("hyperparameters").append(hpForm.node);

  const [models, methods, datasets] = await Promise.all([
    api("GET", "/api/v1/base-models"), api("GET", "/api/v1/methods"), api("GET", "/api/v1/datasets"),
  ]);
  if (!models.ok || !methods.ok || !datasets.ok) {
    showError(form, {message: "Could not load the catalogues from the API; reload the page."});
    return;
  }
  const modelById = Object.fromEntries(models.data.data.map((m) => [m.id, m]));
  const methodByName = Object.fromEntries(methods.data.data.map((m) => [m.name, m]));
  const usable = datasets.data.results.filter((d) => d.status !== "invalid");
  let methodForm = null;

  models.data.data.forEach((m) => $("base_model").append(el("option", {value: m.id, text: m.id})));
  const wantedTask = query.get("task");
  const firstFit = models.data.data.find((m) => !wantedTask || m.tasks.includes(wantedTask));
  if (firstFit) $("base_model").value = firstFit.id;

  function fill(select, items, emptyText) {
    const previous = select.value;
    select.replaceChildren(...(emptyText ? [el("option", {value: "", text: emptyText})] : []), ...items);
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }

  function onModel() {
    const model = modelById[$("base_model").value];
    $("base_model-help").textContent = model.description || "";
    fill($("task"), model.tasks.map((t) => el("option", {value: t, text: t})));
    if (wantedTask && model.tasks.includes(wantedTask) && !$("task").dataset.touched) $("task").value = wantedTask;
    onTask();
  }

  function onTask() {
    const task = $("task").value;
    const options = () => usable.filter((d) => d.task === task).map((d) => el("option", {value: d.id,
      text: `#${d.id} ${d.name} (${d.rows ?? "?"} rows${d.status === "validating" ? ", validating" : ""})`}));
    fill($("dataset"), options(), usable.some((d) => d.task === task) ? null : "no dataset for this task yet");
    fill($("validation_dataset"), options(), "none");
    if (query.get("dataset") && !$("dataset").dataset.touched) $("dataset").value = query.get("dataset");
    fill($("method"), methods.data.data.filter((m) => m.tasks.includes(task))
      .map((m) => el("option", {value: m.name, text: `${m.title} (${m.name})`})));
    if (!$("method").dataset.touched && methodByName.lora && methodByName.lora.tasks.includes(task)) $("method").value = "lora";
    onMethod();
  }

  function onMethod() {
    const method = methodByName[$("method").value];
    const box = $("method-config");
    box.querySelectorAll(".grid").forEach((n) => n.remove());
    if (!method) { methodForm = null; return; }
    const paper = method.paper.startsWith("arXiv:") ? `https://arxiv.org/abs/${method.paper.slice(6)}` : null;
    $("method-help").replaceChildren(`${method.title}. Paper: `,
      paper ? el("a", {href: paper, text: method.paper, rel: "noopener"}) : method.paper,
      method.mergeable ? "" : ". Not mergeable into the base weights.");
    methodForm = schemaForm(method.schema, "method_config");
    box.prepend(methodForm.node);
  }

  $("base_model").addEventListener("change", onModel);
  $("task").addEventListener("change", () => { $("task").dataset.touched = "1"; onTask(); });
  $("dataset").addEventListener("change", () => { $("dataset").dataset.touched = "1"; });
  $("method").addEventListener("change", () => { $("method").dataset.touched = "1"; onMethod(); });
  onModel();

  function body() {
    return {
      adapter_name: $("adapter_name").value.trim(), base_model: $("base_model").value, task: $("task").value,
      dataset: $("dataset").value ? Number($("dataset").value) : null,
      validation_dataset: $("validation_dataset").value ? Number($("validation_dataset").value) : null,
      method: $("method").value, method_config: methodForm ? methodForm.read() : {},
      hyperparameters: hpForm.read(), priority: $("priority").value === "" ? 5 : Number($("priority").value),
    };
  }

  // The estimate before submitting: asked again (debounced) whenever the form changes.
  const mib = (bytes) => `${Math.round(bytes / 2 ** 20).toLocaleString()} MiB`;
  const duration = (s) => (s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);
  let estimateTimer = null;
  let estimateSeq = 0;
  async function estimate() {
    const request = body();
    delete request.adapter_name;
    const box = $("estimate");
    if (!request.dataset) { box.textContent = "Choose a training dataset to see the estimate."; return; }
    const seq = ++estimateSeq;
    box.classList.add("pending");
    if (!box.textContent.includes("steps")) box.textContent = "Estimating…";
    const {ok, data} = await api("POST", "/api/v1/jobs/estimate", request);
    if (seq !== estimateSeq) return;  // a newer request is on its way
    box.classList.remove("pending");
    clearErrors(form);
    if (!ok) { box.textContent = "No estimate: fix the field marked below."; showError(form, data.error, {focus: false}); return; }
    const e = data.estimate;
    if (!e.steps) { box.textContent = "The dataset is still validating: the estimate follows once it is ready."; return; }
    const time = e.seconds == null ? "time: known once a worker has calibrated this model" : `about ${duration(e.seconds)} of training`;
    box.replaceChildren(
      el("strong", {text: `${e.steps.toLocaleString()} steps`}),
      ` · ${e.tokens.toLocaleString()} tokens · peak memory about ${mib(e.peak_memory_bytes)} · ${time} (${e.device})`);
    box.classList.toggle("too-big", !data.fits);
    if (!data.fits) {
      box.append(el("p", {class: "error", role: "alert",
        text: `No worker has that much memory (largest: ${mib(data.largest_worker_memory_bytes)}). Lower batch_size or max_seq_length.`}));
    }
  }
  form.addEventListener("input", () => { clearTimeout(estimateTimer); estimateTimer = setTimeout(estimate, 400); });
  form.addEventListener("change", () => { clearTimeout(estimateTimer); estimateTimer = setTimeout(estimate, 150); });
  estimate();

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    const body_ = body();
    if (!body_.adapter_name) { showError(form, {param: "adapter_name", message: "Name the adapter."}); return; }
    if (!body_.dataset) { showError(form, {param: "dataset", message: "Choose a training dataset (upload one first)."}); return; }
    $("submit").disabled = true;
    const {ok, data} = await api("POST", "/api/v1/jobs", body_);
    $("submit").disabled = false;
    if (ok) { window.location.href = `/jobs/${data.id}`; return; }
    showError(form, data.error);
  });
})();
