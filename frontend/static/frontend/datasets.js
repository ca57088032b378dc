"use strict";
(() => {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file-input");
  const drop = document.getElementById("drop");
  const bar = document.getElementById("upload-progress");
  const statusText = document.getElementById("upload-status");
  const button = document.getElementById("upload-button");

  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => {
    if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; showChosen(); }
  });
  input.addEventListener("change", showChosen);
  function showChosen() {
    const file = input.files[0];
    document.getElementById("drop-text").textContent = file ? `${file.name} (${fmtBytes(file.size)})` : "Drop a file here, or choose one";
  }

  api("GET", "/api/v1/base-models").then(({ok, data}) => {
    if (!ok) return;
    const select = document.getElementById("base_model");
    data.data.forEach((m) => select.append(el("option", {value: m.id, text: `${m.id} (${m.tasks.join(", ")})`})));
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    clearErrors(form);
    const file = input.files[0];
    if (!file) { showError(form, {param: "file", message: "Choose a file to upload."}); return; }
    const body = new FormData(form);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/datasets");
    xhr.setRequestHeader("X-CSRFToken", CSRF);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) {
        bar.value = Math.round((100 * ev.loaded) / ev.total);
        statusText.textContent = `${bar.value}% of ${fmtBytes(ev.total)}`;
      }
    });
    xhr.addEventListener("load", () => {
      button.disabled = false;
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = {error: {message: `upload failed (${xhr.status})`}}; }
      if (xhr.status === 201) {
        statusText.textContent = "Uploaded; validating…";
        window.location.href = `/datasets/${data.id}`;
      } else {
        bar.hidden = true;
        statusText.textContent = "";
        showError(form, data.error || {message: `upload failed (${xhr.status})`});
      }
    });
    xhr.addEventListener("error", () => {
      button.disabled = false;
      bar.hidden = true;
      showError(form, {param: "file", message: "The upload was interrupted (network error); try again."});
    });
    bar.hidden = false;
    bar.value = 0;
    button.disabled = true;
    xhr.send(body);
  });

  async function refresh() {
    const {ok, data} = await api("GET", `/api/v1/datasets${listQuery()}`);
    if (!ok) return true;
    const tbody = document.querySelector("#datasets tbody");
    tbody.replaceChildren(...(data.results.length ? data.results.map((d) => el("tr", {},
      el("td", {}, el("a", {href: `/datasets/${d.id}`, text: d.name})),
      el("td", {text: d.task}), el("td", {}, badge(d.status)),
      el("td", {class: "num", text: d.rows ?? "–"}),
      el("td", {class: "num", text: d.report && d.report.error_count !== undefined ? d.report.error_count : "–"}),
      el("td", {class: "num", text: fmtBytes(d.size_bytes)}), el("td", {text: fmtTime(d.created_at)}),
    )) : [el("tr", {}, el("td", {colspan: "7", class: "muted", text: "No datasets yet: upload one above."}))]));
    pager(document.getElementById("datasets-pager"), data);
    return data.results.some((d) => d.status === "validating");
  }
  pollLoop(refresh, 2000);
})();
