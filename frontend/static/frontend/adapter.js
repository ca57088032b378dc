"use strict";
(() => {
  const NAME = JSON.parse(document.getElementById("adapter-name").textContent);
  const base = `/api/v1/adapters/${encodeURIComponent(NAME)}`;
  const $ = (id) => document.getElementById(id);
  let versions = [];
  let aliases = [];

  const METRIC_KEYS = ["eval_accuracy", "eval_loss", "train_loss"];
  function metricsText(m) {
    if (!m) return "–";
    const keys = METRIC_KEYS.filter((k) => k in m);
    return (keys.length ? keys : Object.keys(m).slice(0, 3)).map((k) => `${k} ${fmtNumber(m[k])}`).join(", ") || "–";
  }

  function lineage(v) {
    const md = v.metadata || {};
    const rows = Object.entries(md).map(([k, val]) => [el("dt", {text: k}),
      el("dd", {}, val !== null && typeof val === "object" ? el("code", {text: JSON.stringify(val)}) : String(val))]);
    const files = v.files.map((f) => el("li", {}, el("span", {class: "mono", text: f.name}), ` ${fmtBytes(f.size)} sha256 `,
      el("span", {class: "mono", text: f.sha256.slice(0, 16)}), "…"));
    return el("details", {id: `v${v.version}`, class: "card", open: window.location.hash === `#v${v.version}`},
      el("summary", {}, el("strong", {text: `Version ${v.version}`}), ": lineage, metrics and files"),
      el("dl", {class: "kv"}, rows.flat()), el("h3", {text: "Files"}), el("ul", {}, files));
  }

  function refOptions(select, withAliases) {
    const previous = select.value;
    select.replaceChildren(
      ...(withAliases ? aliases.map((a) => el("option", {value: a.name, text: `${a.name} (v${a.version})`})) : []),
      ...versions.map((v) => el("option", {value: String(v.version), text: `v${v.version}`})));
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }

  async function load() {
    const [detail, aliasData] = await Promise.all([api("GET", base), api("GET", `${base}/aliases`)]);
    if (!detail.ok) {
      $("versions").querySelector("tbody").replaceChildren(el("tr", {}, el("td", {colspan: "8", class: "error", text: detail.data.error.message})));
      return;
    }
    versions = detail.data.versions.slice().sort((a, b) => b.version - a.version);
    aliases = aliasData.ok ? aliasData.data.aliases : [];
    $("versions").querySelector("tbody").replaceChildren(...versions.map((v) => el("tr", {"data-version": v.version},
      el("td", {}, el("a", {href: `#v${v.version}`, text: `v${v.version}`, onclick: () => { $(`v${v.version}`).open = true; }})),
      el("td", {}, v.aliases.map((a) => el("span", {class: "badge", text: a})), v.tags.map((t) => el("span", {class: "badge muted", text: `#${t}`}))),
      el("td", {text: (v.metadata.base_model && v.metadata.base_model.id) || "–"}),
      el("td", {text: v.metadata.method || "–"}),
      el("td", {text: metricsText(v.metadata.metrics)}),
      el("td", {}, v.job ? el("a", {href: `/jobs/${v.job}`, text: `#${v.job}`}) : "upload"),
      el("td", {text: fmtTime(v.created_at)}),
      el("td", {}, el("a", {href: `${base}/versions/${v.version}/download`, download: `${NAME}-v${v.version}.zip`,
        text: "Download", "aria-label": `Download version ${v.version} as a zip`})))));
    $("lineage").replaceChildren(...versions.map(lineage));
    $("alias-list").replaceChildren(...(aliases.length ? aliases.map((a) => el("li", {"data-alias": a.name},
      el("strong", {text: a.name}), ` → v${a.version} `,
      el("button", {type: "button", class: "link", text: "drop", "aria-label": `Drop alias ${a.name}`,
        onclick: () => dropAlias(a.name)}))) : [el("li", {class: "muted", text: "No aliases yet."})]));
    $("alias-history").replaceChildren(...(aliasData.ok ? aliasData.data.history : []).map((h) => el("li", {},
      el("span", {class: "muted", text: `${fmtTime(h.created_at)} `}),
      `${h.user || "?"}: ${h.alias} ${h.from_version === null ? "created at" : `v${h.from_version} →`} ` +
      `${h.to_version === null ? "dropped" : `v${h.to_version}`}`)));
    refOptions($("alias-version"), false);
    refOptions($("compare-a"), true);
    refOptions($("compare-b"), true);
    if (versions.length > 1 && $("compare-a").value === $("compare-b").value) $("compare-a").value = String(versions[1].version);
    refOptions($("play-ref"), true);
  }

  async function dropAlias(alias) {
    const form = $("alias-form");
    clearErrors(form);
    const {ok, data} = await api("DELETE", `${base}/aliases/${encodeURIComponent(alias)}`);
    if (!ok) { showError(form, data.error); return; }
    await load();
  }

  $("alias-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    clearErrors(form);
    const alias = $("alias-name").value.trim();
    if (!alias) { showError(form, {param: "alias", message: "Name the alias, e.g. production."}); return; }
    const {ok, data} = await api("PUT", `${base}/aliases/${encodeURIComponent(alias)}`, {version: Number($("alias-version").value)});
    if (!ok) { showError(form, data.error); return; }
    await load();
  });

  $("compare-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    clearErrors(form);
    const q = new URLSearchParams({a: $("compare-a").value, b: $("compare-b").value});
    const {ok, data} = await api("GET", `${base}/compare?${q}`);
    const out = $("compare-result");
    if (!ok) { out.replaceChildren(); showError(form, data.error); return; }
    if (data.identical) { out.replaceChildren(el("p", {text: `v${data.a} and v${data.b} have the same lineage.`})); return; }
    out.replaceChildren(...Object.entries(data.differences).filter(([, rows]) => rows.length).map(([section, rows]) =>
      el("div", {class: "scroll"}, el("h3", {text: section}), el("table", {},
        el("thead", {}, el("tr", {}, el("th", {scope: "col", text: "key"}), el("th", {scope: "col", text: `v${data.a}`}),
          el("th", {scope: "col", text: `v${data.b}`}), section === "metrics" ? el("th", {scope: "col", class: "num", text: "b − a"}) : null)),
        el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {class: "mono", text: r.key}),
          el("td", {text: typeof r.a === "object" && r.a !== null ? JSON.stringify(r.a) : fmtNumber(r.a)}),
          el("td", {text: typeof r.b === "object" && r.b !== null ? JSON.stringify(r.b) : fmtNumber(r.b)}),
          section === "metrics" ? el("td", {class: "num", text: r.delta === undefined ? "–" : fmtNumber(r.delta)}) : null)))))));
  });

  function scoresCell(scores) {
    const entries = Object.entries(scores || {}).sort((a, b) => b[1] - a[1]);
    return el("td", {}, entries.map(([label, p]) => el("div", {},
      el("span", {class: "bar", style: `width:${Math.round(p * 8)}rem`}), ` ${label} ${p.toFixed(3)}`)));
  }

  $("playground-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    clearErrors(form);
    const inputs = $("play-inputs").value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!inputs.length) { showError(form, {param: "inputs", message: "Type at least one input."}); return; }
    $("play-run").disabled = true;
    const {ok, status, data} = await api("POST", "/api/v1/predict", {adapter: `${NAME}@${$("play-ref").value}`, inputs});
    $("play-run").disabled = false;
    const out = $("play-result");
    if (!ok) {
      out.replaceChildren();
      showError(form, status === 404 && !(data && data.error) ? {message: "This deployment has no /api/v1/predict."} : data.error);
      return;
    }
    out.replaceChildren(el("div", {class: "scroll"}, el("table", {id: "play-table"},
      el("thead", {}, el("tr", {}, el("th", {scope: "col", text: "input"}), el("th", {scope: "col", text: "output"}),
        el("th", {scope: "col", text: "scores"}))),
      el("tbody", {}, data.outputs.map((o, i) => el("tr", {}, el("td", {text: inputs[i]}),
        el("td", {}, el("strong", {class: "play-label", text: o.label ?? o.text ?? JSON.stringify(o)})),
        o.scores ? scoresCell(o.scores) : el("td", {class: "muted", text: "–"})))))));
  });

  load();
})();
