// Shared helpers of the web UI: the JSON API with the session cookie, DOM building, errors beside their field,
// and a form generated from a JSON Schema (pydantic's model_json_schema()).
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const init = {method, credentials: "same-origin", headers: {"X-CSRFToken": CSRF, Accept: "application/json"}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    return {ok: false, status: 0, data: {error: {code: "network", message: `network error: ${err.message}`}}};
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch { data = {error: {code: "bad_response", message: response.statusText}}; }
  }
  return {ok: response.ok, status: response.status, data};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function fmtNumber(v) {
  if (typeof v !== "number") return v === null || v === undefined ? "–" : String(v);
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

function badge(status) { return el("span", {class: `badge ${status}`, text: status.replace("_", " ")}); }

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

// --- errors next to their cause -------------------------------------------------------------------------
// A field wrapper carries data-param="method_config.r"; its <p class="error"> receives the message.

function clearErrors(form) {
  form.querySelectorAll(".error[data-for]").forEach((p) => { p.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
}

function showError(form, error, {focus = true} = {}) {
  const message = error && error.message ? error.message : "something went wrong";
  let param = error && error.param ? String(error.param) : "";
  let wrap = null;
  while (param && !(wrap = form.querySelector(`[data-param="${CSS.escape(param)}"]`))) {
    param = param.includes(".") ? param.slice(0, param.lastIndexOf(".")) : "";
  }
  wrap = wrap || form.querySelector('[data-param="__form__"]');
  const slot = wrap.querySelector(":scope > .error[data-for]") || wrap;
  slot.textContent = message;
  const control = wrap.querySelector(":scope > input, :scope > select, :scope > textarea");
  if (control && wrap.dataset.param !== "__form__") {
    control.setAttribute("aria-invalid", "true");
    if (focus) control.focus();
  } else if (focus) {
    slot.setAttribute("tabindex", "-1");
    slot.focus();
  }
  return wrap;
}

function field(param, label, control, help) {
  const id = control.id || `f-${param.replace(/[^a-zA-Z0-9_-]/g, "-")}`;
  control.id = id;
  const errId = `${id}-error`;
  const helpId = help ? `${id}-help` : null;
  control.setAttribute("aria-describedby", [helpId, errId].filter(Boolean).join(" "));
  const isCheck = control.type === "checkbox";
  const labelNode = el("label", {for: id, text: label});
  return el("div", {class: isCheck ? "field check" : "field", "data-param": param},
    isCheck ? [control, labelNode] : [labelNode, control],
    help ? el("p", {class: "help", id: helpId, text: help}) : null,
    el("p", {class: "error", id: errId, "data-for": param, "aria-live": "polite"}));
}

// --- a form from a JSON Schema ----------------------------------------------------------------------------

function schemaProp(prop) {
  // pydantic writes Optional[X] as anyOf [X, {type: null}]
  if (prop.anyOf) {
    const real = prop.anyOf.find((p) => p.type !== "null") || {};
    return {...real, ...prop, anyOf: undefined, nullable: prop.anyOf.some((p) => p.type === "null")};
  }
  return prop;
}

function boundsText(p) {
  const parts = [];
  if (p.minimum !== undefined) parts.push(`≥ ${p.minimum}`);
  if (p.exclusiveMinimum !== undefined) parts.push(`> ${p.exclusiveMinimum}`);
  if (p.maximum !== undefined) parts.push(`≤ ${p.maximum}`);
  if (p.exclusiveMaximum !== undefined) parts.push(`< ${p.exclusiveMaximum}`);
  if (p.minItems !== undefined || p.maxItems !== undefined) parts.push(`${p.minItems ?? 0}–${p.maxItems ?? "∞"} items`);
  const dflt = p.default === null || p.default === undefined ? (p.nullable ? "none" : null) : JSON.stringify(p.default);
  return [parts.length ? parts.join(", ") : null, dflt !== null ? `default ${dflt}` : null].filter(Boolean).join("; ");
}

// Returns {node, read()}; read() gives only the values that differ from the defaults, so the server's
// own defaults (and its validation) stay the single source.
function schemaForm(schema, prefix) {
  const props = schema.properties || {};
  const fields = [];
  const node = el("div", {class: "grid"});
  for (const [name, raw] of Object.entries(props)) {
    const p = schemaProp(raw);
    const param = `${prefix}.${name}`;
    const help = [p.description, boundsText(p)].filter(Boolean).join(" · ");
    let control;
    let read;
    if (p.type === "boolean") {
      control = el("input", {type: "checkbox", name: param, checked: !!p.default});
      read = () => control.checked;
    } else if (p.enum) {
      control = el("select", {name: param}, p.nullable ? el("option", {value: "", text: "(none)"}) : null,
        p.enum.map((v) => el("option", {value: v, text: v, selected: v === p.default})));
      read = () => (control.value === "" ? null : control.value);
    } else if (p.type === "integer" || p.type === "number") {
      control = el("input", {type: "number", name: param, inputmode: p.type === "integer" ? "numeric" : "decimal",
        step: p.type === "integer" ? "1" : "any", min: p.minimum ?? p.exclusiveMinimum, max: p.maximum ?? p.exclusiveMaximum,
        value: p.default ?? "", placeholder: p.default === null ? "none" : null});
      read = () => (control.value.trim() === "" ? null : Number(control.value));
    } else if (p.type === "array") {
      control = el("input", {type: "text", name: param, value: (p.default || []).join(", "),
        placeholder: p.default === null ? "default (comma-separated list)" : "comma-separated"});
      read = () => {
        const items = control.value.split(",").map((s) => s.trim()).filter(Boolean);
        if (!items.length) return p.nullable ? null : [];
        const itemType = (p.items || {}).type;
        return itemType === "integer" || itemType === "number" ? items.map(Number) : items;
      };
    } else {
      control = el("input", {type: "text", name: param, value: p.default ?? ""});
      read = () => (control.value === "" && p.nullable ? null : control.value);
    }
    const label = p.title || name;
    node.append(field(param, label, control, help));
    fields.push({name, read, dflt: p.default === undefined ? null : p.default});
  }
  return {
    node,
    read() {
      const out = {};
      for (const f of fields) {
        const v = f.read();
        if (JSON.stringify(v) !== JSON.stringify(f.dflt)) out[f.name] = v;
      }
      return out;
    },
  };
}

// --- charts (chart.js from npm, see frontend/package.json) ------------------------------------------------

function barChart(canvas, labels, values, label) {
  canvas.dataset.points = String(values.length);
  return new Chart(canvas, {
    type: "bar",
    data: {labels, datasets: [{label, data: values, backgroundColor: "#1f5fbf", maxBarThickness: 64}]},
    options: {responsive: true, maintainAspectRatio: false, animation: false, plugins: {legend: {display: false}}},
  });
}

async function pollLoop(fn, ms) {
  // Runs fn every ms until it returns false; a failed request waits and tries again (a restart of the web
  // process or a flaky network changes nothing: everything is re-read from the API).
  for (;;) {
    let more = true;
    try { more = await fn(); } catch (err) { console.error(err); }
    if (more === false) return;
    await new Promise((r) => setTimeout(r, ms));
  }
}

// --- pagination: ?page=N&page_size=N in the page's own URL (a refresh or a shared link keeps the page) -------
function listQuery() {
  const here = new URLSearchParams(window.location.search);
  const query = new URLSearchParams();
  for (const key of ["page", "page_size"]) if (/^[1-9][0-9]*$/.test(here.get(key) || "")) query.set(key, here.get(key));
  return query.toString() ? `?${query}` : "";
}

function pager(nav, data) {
  // Previous / Next links from the API's own next/previous, and where we are.
  const here = new URLSearchParams(window.location.search);
  const page = Number(here.get("page")) || 1;
  const link = (n, text, rel) => {
    const query = new URLSearchParams(here);
    query.set("page", String(n));
    return el("a", {href: `?${query}`, text, rel});
  };
  const shown = data.results.length;
  const first = shown ? (page - 1) * (Number(here.get("page_size")) || shown) + 1 : 0;
  nav.replaceChildren(
    data.previous ? link(page - 1, "← Previous", "prev") : el("span", {class: "muted", text: "← Previous"}),
    el("span", {class: "page-of", text: ` ${shown ? `${first}–${first + shown - 1}` : "0"} of ${data.count} `}),
    data.next ? link(page + 1, "Next →", "next") : el("span", {class: "muted", text: "Next →"}));
  nav.hidden = !data.previous && !data.next;
}
