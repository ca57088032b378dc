"use strict";
(() => {
  function progressCell(job) {
    const {step, total_steps: total} = job.progress;
    if (!total) return el("td", {class: "muted", text: job.status === "succeeded" ? "done" : "–"});
    const pct = Math.round((100 * step) / total);
    return el("td", {}, el("progress", {max: total, value: step, "aria-label": `job ${job.id}: step ${step} of ${total}`}),
      el("span", {class: "muted", text: ` ${step}/${total} (${pct}%)`}));
  }
  function etaText(job) {
    if (job.status === "queued") return job.queue_eta_seconds === null ? "–" : `starts in ~${fmtSeconds(job.queue_eta_seconds)}`;
    if (FINAL.has(job.status)) return "–";
    return job.progress.eta_seconds === null ? "–" : `${fmtSeconds(job.progress.eta_seconds)} left`;
  }
  async function refresh() {
    const {ok, data} = await api("GET", `/api/v1/jobs${listQuery()}`);
    if (!ok) return true;
    const tbody = document.querySelector("#jobs tbody");
    tbody.replaceChildren(...(data.results.length ? data.results.map((job) => el("tr", {"data-job": job.id},
      el("td", {}, el("a", {href: `/jobs/${job.id}`, text: `#${job.id}`})),
      el("td", {}, job.result ? el("a", {href: `/adapters/${encodeURIComponent(job.result.adapter)}#v${job.result.version}`,
        text: job.result.ref}) : job.adapter_name),
      el("td", {text: job.method}), el("td", {text: job.base_model}),
      el("td", {}, badge(job.status), job.error ? el("div", {class: "error", text: job.error.message}) : null),
      progressCell(job),
      el("td", {class: "num", text: job.queue_position ?? "–"}),
      el("td", {text: etaText(job)}), el("td", {text: fmtTime(job.created_at)}),
    )) : [el("tr", {}, el("td", {colspan: "9", class: "muted"}, "No jobs yet. ", el("a", {href: "/jobs/new", text: "Start one"})))]));
    pager(document.getElementById("jobs-pager"), data);
    return true;
  }
  pollLoop(refresh, 2000);
})();
