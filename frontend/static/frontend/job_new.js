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

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    const body = {
      adapter_name: $("adapter_name").value.trim(), base_model: $("base_model").value, task: $("task").value,
      dataset: $("dataset").value ? Number($("dataset").value) : null,
      validation_dataset: $("validation_dataset").value ? Number($("validation_dataset").value) : null,
      method: $("method").value, method_config: methodForm ? methodForm.read() : {},
      hyperparameters: hpForm.read(), priority: $("priority").value === "" ? 5 : Number($("priority").value),
    };
    if (!body.adapter_name) { showError(form, {param: "adapter_name", message: "Name the adapter."}); return; }
    if (!body.dataset) { showError(form, {param: "dataset", message: "Choose a training dataset (upload one first)."}); return; }
    $("submit").disabled = true;
    const {ok, data} = await api("POST", "/api/v1/jobs", body);
    $("submit").disabled = false;
    if (ok) { window.location.href = `/jobs/${data.id}`; return; }
    showError(form, data.error);
  });
})();
