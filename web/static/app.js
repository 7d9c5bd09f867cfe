// liftplace web UI: helpers shared by every page (API calls, DOM building, formatting, polling, forms).
// No framework and no build step; every page script uses window.LP.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);

  // --- DOM --------------------------------------------------------------------------------------

  // el("td", {class: "num", title: "..."}, "text", childNode, ...): text is always set as text, never as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  // --- formatting -------------------------------------------------------------------------------

  function num(x, digits = 2) {
    if (x === null || x === undefined || Number.isNaN(x)) return "";
    if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
    return x.toFixed(digits);
  }

  // Significant digits for loss values of any scale (1.23e-5, 0.0123, 123.4).
  function sig(x, digits = 4) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(digits - 1);
    return Number(x.toPrecision(digits)).toString();
  }

  function int(x) {
    return x === null || x === undefined ? "" : Number(x).toLocaleString("en-US");
  }

  function params(n) {
    if (!n) return "?";
    return n >= 1e4 ? (n / 1e6).toFixed(2) + "M" : int(n);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "";
    const s = Math.floor(seconds);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const pad = (v) => String(v).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // Seconds a job has run (or waited, while queued): from start (or creation) to its end or now.
  function elapsed(job) {
    const start = job.started_at || job.dispatched_at;
    if (!start) return null;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    return (end - new Date(start)) / 1000;
  }

  const ENDED = data.job_statuses.ended;  // liftplace.job_status, as the server renders it into the page
  const RETRYABLE = data.job_statuses.retryable;

  function badge(status, extra) {
    return el("span", {class: `badge s-${status}`, title: extra || null}, status);
  }

  function progress(fraction, label, status) {
    const pct = fraction === null || fraction === undefined ? 0 : Math.max(0, Math.min(1, fraction)) * 100;
    return el("div", {class: `progress s-${status || "running"}`, role: "progressbar", "aria-valuenow": pct.toFixed(0),
                      "aria-valuemin": "0", "aria-valuemax": "100"},
      el("div", {class: "bar", style: {width: pct.toFixed(1) + "%"}}),
      el("span", {class: "label"}, label || ""));
  }

  function methodColor(method) {
    // One color per method, in the order of liftplace.methods (the same on every plot).
    const palette = ["#7f7f7f", "#1f77b4", "#17becf", "#ff7f0e", "#bcbd22", "#9467bd", "#d62728"];
    const i = data.methods.indexOf(method);
    return palette[(i < 0 ? data.methods.length : i) % palette.length];
  }

  // --- the API ----------------------------------------------------------------------------------

  function showAuthBanner() {
    const banner = document.getElementById("auth-banner");
    const link = document.getElementById("auth-banner-link");
    link.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    banner.hidden = false;
  }

  // fetch a JSON endpoint of this origin; resolves {ok, status, data}. A 401 shows the sign-in banner.
  async function api(method, path, body) {
    const init = {method, credentials: "same-origin", headers: {Accept: "application/json"}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return {ok: false, status: 0, data: {detail: "the server did not answer (" + err.message + ")"}};
    }
    let payload = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) payload = await response.json().catch(() => null);
    else payload = {detail: await response.text().catch(() => "")};
    if (response.status === 401 && !path.startsWith("/api/auth/")) showAuthBanner();
    return {ok: response.ok, status: response.status, data: payload};
  }

  function errorText(result) {
    const d = result.data && result.data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => e.msg).join("; ");
    return `HTTP ${result.status}`;
  }

  let toastTimer = null;
  function toast(message, kind) {
    const node = document.getElementById("toast");
    node.textContent = message;
    node.className = "toast " + (kind || "");
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, 5000);
  }

  // Cancel or retry a job from a button; `after` runs when the API has answered.
  async function jobAction(jobId, action, after) {
    const r = await api("POST", `/api/jobs/${jobId}/${action}`);
    if (r.ok) toast(`job ${jobId}: ${action === "cancel" ? "cancel requested" : "queued again"}`, "ok");
    else if (r.status !== 401) toast(`job ${jobId}: ${errorText(r)}`, "error");
    if (after) after(r);
  }

  // --- polling ----------------------------------------------------------------------------------

  // Call `fn` now and then every `ms` while it returns true (false: stop). Slower while the tab is hidden.
  function poll(fn, ms) {
    let stopped = false;
    let timer = null;
    async function tick() {
      if (stopped) return;
      let again = true;
      try {
        again = await fn();
      } catch (err) {
        console.error(err);
      }
      if (again === false) { stopped = true; return; }
      timer = setTimeout(tick, document.hidden ? ms * 4 : ms);
    }
    tick();
    // now(): poll at once, and again from then on if fn had stopped the polling (e.g. a retried job).
    return {stop() { stopped = true; clearTimeout(timer); }, now() { stopped = false; clearTimeout(timer); tick(); }};
  }

  // --- plots (plotly, served from the installed plotly package) ---------------------------------

  const PLOT_CONFIG = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"]};
  const PLOT_FONT = {family: "-apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif", size: 12,
                     color: "#24292f"};

  function plot(node, traces, layout) {
    const base = {
      font: PLOT_FONT, margin: {l: 56, r: 16, t: 36, b: 44}, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
      hovermode: "closest", legend: {orientation: "h", y: -0.22, font: {size: 11}},
      xaxis: {gridcolor: "#eaeef2", zerolinecolor: "#d0d7de", linecolor: "#d0d7de"},
      yaxis: {gridcolor: "#eaeef2", zerolinecolor: "#d0d7de", linecolor: "#d0d7de"},
    };
    const merged = Object.assign({}, base, layout);
    merged.xaxis = Object.assign({}, base.xaxis, layout.xaxis || {});
    merged.yaxis = Object.assign({}, base.yaxis, layout.yaxis || {});
    if (typeof Plotly === "undefined") {
      replace(node, el("p", {class: "muted"}, "plotly.js is not available (the plotly package is not installed)"));
      return;
    }
    Plotly.react(node, traces, merged, PLOT_CONFIG);
  }

  // --- forms: JSON to the API, 422 answers shown next to their fields ---------------------------

  // The value of one input as the API wants it: numbers parsed, anything else sent as typed (the server says why
  // it is wrong), empty = left out (the server's default).
  function inputValue(input) {
    const kind = input.dataset.kind;
    const raw = input.value.trim();
    if (raw === "") return undefined;
    if (kind === "int" || kind === "float") {
      const n = Number(raw);
      return raw !== "" && Number.isFinite(n) ? n : raw;
    }
    if (kind === "bool") return raw === "true" ? true : raw === "false" ? false : raw;
    if (kind === "list") {
      if (/^\d+$/.test(raw)) return Number(raw);
      const parts = raw.split(/[\s,]+/).filter(Boolean);
      return parts.map((p) => (/^\d+$/.test(p) ? Number(p) : p));
    }
    return raw;
  }

  // {field: value} from the form's inputs ([data-field] wrappers; checkbox groups become lists).
  function formBody(form) {
    const body = {};
    for (const wrap of form.querySelectorAll("[data-field]")) {
      if (wrap.closest("[hidden]")) continue;
      const name = wrap.dataset.field;
      const boxes = wrap.querySelectorAll("input[type=checkbox]");
      const radios = wrap.querySelectorAll("input[type=radio]");
      if (boxes.length) {
        body[name] = Array.from(boxes).filter((b) => b.checked).map((b) => b.value);
      } else if (radios.length) {
        const chosen = Array.from(radios).find((r) => r.checked);
        if (chosen) body[name] = chosen.value;
      } else {
        const input = wrap.querySelector("input, select, textarea");
        if (!input) continue;
        const value = inputValue(input);
        if (value !== undefined) body[name] = value;
      }
    }
    return body;
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach((n) => { n.textContent = ""; });
    form.querySelectorAll("[data-field].invalid").forEach((n) => n.classList.remove("invalid"));
    form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
    const general = form.querySelector(".form-error");
    if (general) { general.textContent = ""; general.hidden = true; }
  }

  function fieldWrap(form, name) {
    return Array.from(form.querySelectorAll("[data-field]")).find((n) => n.dataset.field === name && !n.closest("[hidden]"));
  }

  function markField(form, name, message) {
    const wrap = fieldWrap(form, name);
    if (!wrap) return false;
    wrap.classList.add("invalid");
    const out = wrap.querySelector(".field-error");
    out.textContent = out.textContent ? out.textContent + "; " + message : message;
    const input = wrap.querySelector("input, select, textarea");
    if (input) input.setAttribute("aria-invalid", "true");
    const fold = wrap.closest("details");
    if (fold) fold.open = true;
    return true;
  }

  function generalError(form, message, withLogin) {
    const box = form.querySelector(".form-error");
    replace(box, message);
    if (withLogin) {
      box.append(" ", el("a", {href: "/login?next=" + encodeURIComponent(location.pathname + location.search)}, "Sign in"));
    }
    box.hidden = false;
  }

  // Show an API error on the form: pydantic's [{loc: ["body", field, ...], msg}] next to the fields; a
  // "field: message" string (409, and the server's own checks) next to that field; anything else on top.
  function showErrors(form, result) {
    const detail = result.data && result.data.detail;
    let first = null;
    const items = Array.isArray(detail) ? detail : [];
    const loose = [];
    for (const item of items) {
      const loc = (item.loc || []).slice(1).filter((p) => typeof p === "string");
      const name = loc.find((p) => fieldWrap(form, p));
      let msg = item.msg || "invalid";
      msg = msg.replace(/^Value error, /, "");
      // An axis value: name it (axes.lr.1), as the schema's own messages do not.
      const path = (item.loc || []).slice(1).join(".");
      if (name === "axes" && !msg.startsWith("axes.")) msg = `${path}: ${msg}`;
      if (name && markField(form, name, msg)) first = first || name;
      else loose.push((loc.join(".") ? loc.join(".") + ": " : "") + msg);
    }
    if (typeof detail === "string") {
      const m = /^([a-z_]+): (.*)$/s.exec(detail);
      if (m && markField(form, m[1], detail)) first = first || m[1];
      else loose.push(detail);
    }
    if (result.status === 401 && !first) generalError(form, errorText(result) + ".", true);
    else if (loose.length) generalError(form, loose.join("; "));
    else if (!items.length && typeof detail !== "string") generalError(form, errorText(result));
    if (first) {
      const wrap = fieldWrap(form, first);
      wrap.scrollIntoView({block: "center", behavior: "smooth"});
      const input = wrap.querySelector("input, select, textarea");
      if (input) input.focus({preventScroll: true});
    }
  }

  // Submit `form` as JSON to `url`; on success call onSuccess(data) (e.g. go to the new job).
  function bindForm(form, {url, build, onSuccess}) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      const label = button.textContent;
      button.textContent = "Submitting…";
      try {
        const body = build ? build(formBody(form)) : formBody(form);
        const result = await api("POST", typeof url === "function" ? url(body) : url, body);
        if (result.ok) onSuccess(result.data);
        else showErrors(form, result);
      } finally {
        button.disabled = false;
        button.textContent = label;
      }
    });
  }

  // Fill a <select> or a checkbox/radio list from an API list; keeps the current choice when still there.
  function fillSelect(select, items, {value, label, empty, disabled, none}) {
    const current = select.value || select.dataset.default || "";
    const options = items.map((it) => el("option", {value: value(it), disabled: disabled && disabled(it)}, label(it)));
    if (!items.length && empty && !none) options.push(el("option", {value: "", disabled: true}, empty));
    if (none) options.unshift(el("option", {value: ""}, none));  // optional field: empty = the server's default
    replace(select, options);
    if (items.some((it) => value(it) === current)) select.value = current;
  }

  // --- sign out --------------------------------------------------------------------------------

  const signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("click", async () => {
      await api("POST", "/api/auth/logout");
      location.reload();
    });
  }

  window.LP = {
    data, el, replace, num, sig, int, params, duration, time, elapsed, badge, progress, methodColor, api, errorText,
    toast, jobAction, poll, plot, bindForm, fillSelect, showErrors, clearErrors, formBody, ENDED, RETRYABLE,
  };
})();
