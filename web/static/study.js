// Study dashboard: the Table-6 grid filling in live, FID per seed, the capacity-gap plot, Welch's t-tests,
// downloads, MLflow links, and the paper's own Table 6 beside ours.
"use strict";

(function () {
  const {el, replace, api, badge, progress, num, int, time, poll, plot, methodColor, toast, ENDED} = LP;
  const studyId = Number(document.getElementById("study").dataset.studyId);
  const $ = (id) => document.getElementById(id);
  let lastPlotKey = null;
  let threshold = null;

  // --- the Table-6 grid (ours and the paper's) -------------------------------------------------

  // spec: {groups: [{key, label, sub}], methods, nTries, cell(method, key) -> {tries: [{text, cls, title, href}],
  //        mean, std, best, meanTitle, meanHref, meanHrefTitle}, paperMethod}
  function buildT6(table, spec) {
    const head1 = el("tr", {class: "groups"}, el("th", {rowspan: 2}, "Method"));
    const head2 = el("tr", {class: "cols"});
    for (const g of spec.groups) {
      head1.append(el("th", {colspan: spec.nTries + 2, class: "gstart", title: g.title || null}, g.label,
                      g.sub ? [" ", el("span", {class: "params"}, g.sub)] : null));
      for (let i = 0; i < spec.nTries; i++) {
        head2.append(el("th", {class: i === 0 ? "gstart" : null}, `Try ${i + 1}`));
      }
      head2.append(el("th", {}, "Mean"), el("th", {}, "Std"));
    }
    const body = el("tbody");
    for (const m of spec.methods) {
      const tr = el("tr", {"data-method": m},
        el("th", {}, m, m === spec.paperMethod ? el("span", {class: "paper-mark", title: "the paper's full method"}, "ours") : null));
      for (const g of spec.groups) {
        const c = spec.cell(m, g.key) || {tries: []};
        for (let i = 0; i < spec.nTries; i++) {
          const t = c.tries[i];
          const content = t ? (t.href ? el("a", {href: t.href}, t.text) : t.text) : "";
          tr.append(el("td", {class: ["try", i === 0 ? "gstart" : "", t ? t.cls : "pending"].join(" ").trim(),
                              title: t ? t.title : null, "data-teacher": g.key, "data-try": i + 1}, content));
        }
        const mean = c.mean !== null && c.mean !== undefined ? num(c.mean) : "";
        const meanContent = c.meanHref
          ? el("a", {href: c.meanHref, target: "_blank", rel: "noopener", class: "mlflow-cell", title: c.meanHrefTitle},
               mean || "↗")
          : mean;
        tr.append(el("td", {class: "mean" + (c.best ? " best" : ""), title: c.meanTitle || null, "data-teacher": g.key},
                     meanContent),
                  el("td", {class: "std", "data-teacher": g.key}, c.std !== null && c.std !== undefined ? num(c.std) : ""));
      }
      body.append(tr);
    }
    replace(table, el("thead", {}, head1, head2), body);
  }

  function tryEntry(t, run) {
    const where = `seed ${t.seed} · job #${t.job_id}`;
    const href = `/jobs/${t.job_id}`;
    switch (t.status) {
      case "succeeded": {
        const collapse = run && run.collapse;
        return {text: num(t.fid), href, cls: collapse ? "collapse" : "",
                title: `${where} · FID ${num(t.fid, 4)}` + (collapse ? ` · collapsed: FID over ${threshold}` : "")};
      }
      case "diverged":
        return {text: "div.", href, cls: "collapse", title: `${where} · diverged (the loss or the samples were not finite): a collapse`};
      case "failed":
        return {text: "fail", href, cls: "failed", title: `${where} · failed (the job broke): not a try of the method, not in the mean`};
      case "cancelled":
        return {text: "canc.", href, cls: "pending", title: `${where} · cancelled`};
      case "dispatched":
        return {text: "disp.", href, cls: "pending", title: `${where} · dispatched, waiting for a free worker`};
      case "running": {
        const pct = run && run.fraction !== null ? Math.round(run.fraction * 100) + "%" : "…";
        return {text: pct, href, cls: "running", title: `${where} · running`};
      }
      default:
        return {text: "·", href, cls: "pending", title: `${where} · queued`};
    }
  }

  function renderOurTable(d) {
    const runs = new Map(d.runs.map((r) => [r.job_id, r]));
    const cells = new Map(d.table.cells.map((c) => [`${c.method}\u0000${c.teacher}`, c]));
    const links = new Map((d.mlflow_cells || []).map((l) => [`${l.method}\u0000${l.teacher}`, l]));
    const sizes = new Map(d.teachers.map((t) => [t.name, t]));
    const nTries = Math.max(d.study.seeds.length, ...d.table.cells.map((c) => c.tries.length));
    buildT6($("t6"), {
      groups: d.table.teachers.map((t) => ({key: t, label: t, sub: sizes.get(t) ? `(${sizes.get(t).label})` : ""})),
      methods: d.table.methods, nTries, paperMethod: LP.data.paper_method,
      cell(m, t) {
        const c = cells.get(`${m}\u0000${t}`);
        if (!c) return null;
        const link = links.get(`${m}\u0000${t}`);
        return {
          tries: c.tries.map((x) => tryEntry(x, runs.get(x.job_id))),
          meanHref: link && link.url ? link.url : null,
          meanHrefTitle: link ? `MLflow: compare this cell's ${link.runs} run${link.runs === 1 ? "" : "s"} ↗` : null,
          mean: c.mean, std: c.std, best: (d.table.best[t] || []).includes(m),
          meanTitle: `mean of ${c.n} succeeded tr${c.n === 1 ? "y" : "ies"}; ${c.collapses} collapse${c.collapses === 1 ? "" : "s"}` +
                     (c.complete ? "" : " (cell still running)"),
        };
      },
    });
    const metric = d.table.metric || "FID";
    replace($("t6-caption"), `${metric} of each try (lower is better), the mean and the sample std (ddof = 1) of the succeeded tries; `,
      "best mean per teacher in ", el("b", {}, "bold"), "; ", el("span", {class: "legend-chip collapse"}, "red"),
      ` = collapsed (diverged, "div.", or ${metric} over ${threshold}); "fail" = the job broke (not counted). `,
      "Hover a cell for its seed and job; click it for the job page, or a mean for MLflow's compare view of that cell's runs.");
    $("t6-hint").textContent = `${d.study.cells_complete} of ${d.study.cells_total} cells complete`;
  }

  // --- plots -----------------------------------------------------------------------------------

  // A cell's series on the plots: its method and, in a study with axes, the axis values it uses, so that
  // the tries of different axis values never share a box or a line (a cell that ignores an axis is one series).
  function seriesName(c) {
    const parts = Object.entries(c.axes || {}).map(([k, v]) => `${k}=${v}`);
    return parts.length ? `${c.method} · ${parts.join(", ")}` : c.method;
  }

  // {names (in method order), method (series -> method), of (job id -> series), symbol (series -> marker)}
  function plotSeries(d) {
    const names = [], method = new Map(), of = new Map(), symbol = new Map();
    const symbols = ["circle", "diamond", "square", "triangle-up", "cross", "x", "star", "hexagon"];
    for (const m of d.table.methods) {
      let i = 0;
      for (const c of d.table.cells.filter((x) => x.method === m)) {
        const s = seriesName(c);
        if (!method.has(s)) {
          names.push(s);
          method.set(s, m);
          symbol.set(s, symbols[i++ % symbols.length]);
        }
        for (const t of c.tries) of.set(t.job_id, s);
      }
    }
    return {names, method, of, symbol};
  }

  function seedPlot(d) {
    const labels = new Map(d.teachers.map((t) => [t.name, `${t.name} (${t.label})`]));
    const series = plotSeries(d);
    const traces = [];
    for (const s of series.names) {
      const m = series.method.get(s);
      const runs = d.runs.filter((r) => (series.of.get(r.job_id) ?? r.method) === s);
      const ok = runs.filter((r) => r.status === "succeeded" && r.fid !== null);
      const diverged = runs.filter((r) => r.status === "diverged").length;
      if (!ok.length && !diverged) continue;
      traces.push({
        type: "box", name: s + (diverged ? ` (${diverged} div.)` : ""), legendgroup: s,
        x: ok.map((r) => labels.get(r.teacher) || r.teacher), y: ok.map((r) => r.fid),
        text: ok.map((r) => `seed ${r.seed} · job #${r.job_id}`),
        boxpoints: "all", jitter: 0.45, pointpos: 0, marker: {color: methodColor(m), size: 7, opacity: 0.85,
          symbol: series.symbol.get(s),
          line: {color: ok.map((r) => (r.collapse ? "#cf222e" : "#ffffff")), width: ok.map((r) => (r.collapse ? 2 : 0.5))}},
        line: {color: methodColor(m), width: 1.2}, fillcolor: "rgba(0,0,0,0)",
        hovertemplate: "%{text}<br>FID %{y:.2f}<extra>" + s + "</extra>",
      });
    }
    if (!traces.length) {
      replace($("plot-seeds"), el("div", {class: "placeholder"}, "Points appear as tries finish."));
      return;
    }
    if (!$("plot-seeds").classList.contains("js-plotly-plot")) replace($("plot-seeds"));
    plot($("plot-seeds"), traces, {boxmode: "group", yaxis: {title: {text: d.table.metric || "FID"}, rangemode: "tozero"},
                                   xaxis: {title: {text: "teacher"}}, margin: {l: 56, r: 16, t: 16, b: 44}});
  }

  // points: [{method, x (parameters), y (mean), std, label (teacher), size (its size as text)}]
  // `methods`: the series, in order; `methodOf`: a series' method (its colour), when series are not methods.
  function capacityPlot(node, points, methods, metric, empty, methodOf = (m) => m, symbolOf = () => "circle") {
    const traces = [];
    for (const m of methods) {
      const pts = points.filter((p) => p.method === m && p.x && p.y !== null && p.y !== undefined)
                        .sort((a, b) => a.x - b.x);
      if (!pts.length) continue;
      traces.push({
        type: "scatter", mode: "lines+markers", name: m, x: pts.map((p) => p.x), y: pts.map((p) => p.y),
        error_y: {type: "data", array: pts.map((p) => p.std || 0), visible: true, thickness: 1.2, width: 4},
        text: pts.map((p) => p.label), marker: {color: methodColor(methodOf(m)), size: 8, symbol: symbolOf(m)},
        line: {color: methodColor(methodOf(m)), width: 2},
        hovertemplate: "%{text}: %{x:.3s} parameters<br>mean %{y:.2f} ± %{error_y.array:.2f}<extra>" + m + "</extra>",
      });
    }
    if (!traces.length) {
      replace(node, el("div", {class: "placeholder"}, empty));
      return;
    }
    if (!node.classList.contains("js-plotly-plot")) replace(node);
    // Ticks at the teachers themselves, labelled by size, on a log axis padded by a quarter decade.
    const xs = [...new Set(points.filter((p) => p.x && p.y !== null && p.y !== undefined).map((p) => p.x))].sort((a, b) => a - b);
    const lo = Math.log10(xs[0]) - 0.25;
    const hi = Math.log10(xs[xs.length - 1]) + 0.25;
    const labelOf = new Map(points.map((p) => [p.x, p.size]));
    plot(node, traces, {xaxis: {type: "log", title: {text: "teacher parameters"}, tickmode: "array", tickvals: xs,
                                ticktext: xs.map((x) => labelOf.get(x)), range: [lo, hi]},
                        yaxis: {title: {text: `${metric} (mean ± std over seeds)`}, rangemode: "tozero"},
                        margin: {l: 56, r: 16, t: 16, b: 44}});
  }

  function renderPlots(d) {
    const key = JSON.stringify([d.runs.map((r) => [r.job_id, r.status, r.fid]), d.teachers]);
    if (key === lastPlotKey) return;
    lastPlotKey = key;
    seedPlot(d);
    const sizes = new Map(d.teachers.map((t) => [t.name, t]));
    const series = plotSeries(d);
    const points = d.table.cells.map((c) => ({method: seriesName(c), x: sizes.get(c.teacher)?.parameters, y: c.mean,
                                              std: c.std, label: c.teacher, size: sizes.get(c.teacher)?.label}));
    capacityPlot($("plot-capacity"), points, series.names, d.table.metric || "FID",
                 "Appears as cells get a mean (teachers of known size).", (s) => series.method.get(s) || s,
                 (s) => series.symbol.get(s) || "circle");
  }

  // --- Welch's t-tests -------------------------------------------------------------------------

  function renderWelch(d) {
    const head = el("thead", {}, el("tr", {},
      el("th", {}, "Teacher"), el("th", {}, "Method A"), el("th", {}, "Method B"), el("th", {class: "num"}, "n A / B"),
      el("th", {class: "num"}, "mean A"), el("th", {class: "num"}, "mean B"), el("th", {class: "num"}, "t"),
      el("th", {class: "num"}, "df"), el("th", {class: "num"}, "p"), el("th", {}, "Reading")));
    const rows = d.welch.map((w) => {
      let reading;
      if (w.pvalue === null) reading = el("span", {class: "muted"}, w.reason || "");
      else if (w.pvalue < 0.05) {
        const lower = w.mean_a < w.mean_b ? w.method_a : w.method_b;
        reading = el("span", {}, el("b", {class: "mono"}, lower), " has the lower FID (p < 0.05)");
      } else reading = el("span", {class: "muted"}, "no significant difference at 0.05");
      return el("tr", {},
        el("td", {class: "mono"}, w.teacher), el("td", {class: "mono"}, w.method_a), el("td", {class: "mono"}, w.method_b),
        el("td", {class: "num"}, `${w.n_a} / ${w.n_b}`), el("td", {class: "num"}, num(w.mean_a)),
        el("td", {class: "num"}, num(w.mean_b)), el("td", {class: "num"}, num(w.statistic, 3)),
        el("td", {class: "num"}, num(w.df, 2)),
        el("td", {class: "num" + (w.pvalue !== null && w.pvalue < 0.05 ? " sig" : "")},
           w.pvalue === null ? "" : w.pvalue < 1e-4 ? w.pvalue.toExponential(2) : w.pvalue.toFixed(4)),
        el("td", {class: "verdict"}, reading));
    });
    const body = el("tbody", {}, rows.length ? rows
      : el("tr", {class: "empty"}, el("td", {colspan: 10}, "A study with one method has no pair to compare.")));
    replace($("welch"), head, body);
  }

  // --- header ----------------------------------------------------------------------------------

  function renderHead(d) {
    const s = d.study;
    document.title = `${s.name} · liftplace`;
    $("study-title").textContent = s.name;
    replace($("study-status"), badge(s.status));
    const o = s.options || {};
    replace($("study-sub"), `#${s.id} · ${s.dataset} · student ratio ${s.student_ratio} · ${int(o.steps)} steps · `,
      `seeds ${s.seeds.join(", ")} · ${d.table.metric || "FID"} · created ${time(s.created_at)}`);
    const ended = ENDED.reduce((a, k) => a + (s.status_counts[k] || 0), 0);
    const actions = [el("a", {class: "btn", href: `/queue?study=${s.id}`}, "Jobs in the queue")];
    if (s.status !== "ended") {
      actions.push(el("button", {class: "btn danger", type: "button", onclick: cancelStudy}, "Cancel study"));
    }
    replace($("study-actions"), actions);
    const collapses = d.table.cells.reduce((a, c) => a + c.collapses, 0);
    const stat = (k, v) => el("div", {class: "stat"}, el("span", {class: "v"}, v), el("span", {class: "k"}, k));
    replace($("study-stats"),
      stat("jobs ended", `${ended} / ${s.jobs}`), stat("running", s.status_counts.running || 0),
      stat("dispatched", s.status_counts.dispatched || 0), stat("queued", s.status_counts.queued || 0), stat("cells complete", `${s.cells_complete} / ${s.cells_total}`),
      stat("collapses", collapses), stat("failed", s.status_counts.failed || 0));
    const fraction = s.jobs ? ended / s.jobs : 0;
    replace($("study-progress"), progress(fraction, `${ended} of ${s.jobs} jobs ended`, s.status === "ended" ? "succeeded" : "running"));
    const links = [];
    if (s.mlflow_url) links.push(el("a", {class: "btn small", id: "mlflow-parent", href: s.mlflow_url, target: "_blank", rel: "noopener"}, "study run ↗"));
    if (d.mlflow_compare_url) {
      const n = d.runs.filter((r) => r.mlflow_run_id).length;
      links.push(el("a", {class: "btn small", id: "mlflow-compare", href: d.mlflow_compare_url, target: "_blank", rel: "noopener",
                          title: `MLflow's compare view of the study's distillation runs (${d.mlflow_search_filter}); ` +
                                 "a cell's mean links to its own"},
                    `compare ${n} runs ↗`));
    }
    replace($("mlflow-links"), links.length ? links : el("span", {class: "muted small"}, "links appear once jobs have MLflow runs"));
  }

  async function cancelStudy() {
    if (!confirm("Cancel every queued and running job of this study?")) return;
    const r = await api("POST", `/api/studies/${studyId}/cancel`);
    if (r.ok) toast("study: cancel requested", "ok");
    else if (r.status !== 401) toast(LP.errorText(r), "error");
    refresher.now();
  }

  // --- the paper's Table 6 ---------------------------------------------------------------------

  async function renderPaper() {
    const r = await api("GET", "/api/reference/paper-table6");
    if (!r.ok) return;
    const p = r.data;
    const cells = new Map(p.cells.map((c) => [`${c.method}\u0000${c.teacher}`, c]));
    buildT6($("paper-t6"), {
      groups: p.teachers.map((t) => {
        const c = p.cells.find((x) => x.teacher === t);
        return {key: t, label: t, sub: c && c.teacher_fid !== null ? `(teacher FID ${num(c.teacher_fid)})` : ""};
      }),
      methods: p.methods, nTries: Math.max(...p.cells.map((c) => c.tries.length)),
      paperMethod: LP.data.paper_method,
      cell(m, t) {
        const c = cells.get(`${m}\u0000${t}`);
        if (!c) return null;
        return {tries: c.tries.map((f, i) => ({text: num(f), cls: threshold !== null && f > threshold ? "collapse" : "",
                                               title: `try ${i + 1}: FID ${num(f)}` + (threshold !== null && f > threshold ? ` · over ${threshold}: a collapse` : "")})),
                mean: c.mean, std: c.std, best: (p.best[t] || []).includes(m)};
      },
    });
    $("paper-caption").textContent = p.caption;
    $("paper-hint").textContent = `${p.metric}; teachers by parameter count`;
    const points = p.cells.map((c) => ({method: c.method, x: c.parameters, y: c.mean, std: c.std, label: c.teacher,
                                        size: c.teacher}));
    capacityPlot($("plot-paper"), points, p.methods, p.metric, "");
  }

  // --- a study with axes: grids per axis value, heatmaps for two axes, Welch against a baseline ---------

  const cellText = (c) => (c && c.mean !== null ? num(c.mean) + (c.std !== null ? ` ± ${num(c.std)}` : "") : "–");
  const cellLabel = (c) => [c.teacher, c.method, ...Object.entries(c.axes).map(([a, v]) => `${a} = ${v}`)].join(" · ");

  function panelGrid(d, panel, cells, nTries) {
    const table = el("table", {class: "t6 compact", "data-panel": panel.label});
    const byKey = new Map(panel.cells.map((k) => [k, cells.get(k)]));
    const runs = new Map(d.runs.map((r) => [r.job_id, r]));
    buildT6(table, {
      groups: d.table.teachers.map((t) => ({key: t, label: t})),
      methods: d.table.methods.filter((m) => panel.cells.some((k) => byKey.get(k).method === m)),
      nTries, paperMethod: LP.data.paper_method,
      cell(m, t) {
        const c = [...byKey.values()].find((x) => x.method === m && x.teacher === t);
        if (!c) return null;
        return {tries: c.tries.map((x) => tryEntry(x, runs.get(x.job_id))), mean: c.mean, std: c.std,
                best: (panel.best[t] || []).includes(c.key), meanTitle: cellLabel(c)};
      },
    });
    return el("div", {class: "axis-panel"}, el("h3", {}, panel.label), el("div", {class: "table-wrap"}, table));
  }

  function heatmap(h, cells, lo, hi) {
    const colour = (c) => {
      if (!c || c.mean === null || hi <= lo) return null;
      const f = (c.mean - lo) / (hi - lo);  // 0: the lowest mean FID (green) .. 1: the highest (red)
      return `background: hsl(${Math.round(120 * (1 - f))}, 70%, 85%)`;
    };
    const head = el("tr", {}, el("th", {}, `${h.row_axis} \\ ${h.col_axis}`), ...h.cols.map((v) => el("th", {}, String(v))));
    const rows = h.rows.map((r, i) => el("tr", {}, el("th", {}, String(r)), ...h.cells[i].map((k) => {
      const c = cells.get(k);
      return el("td", {class: "num heat", style: colour(c), title: c ? `${cellLabel(c)} · n ${c.n}` : "", "data-key": k},
                cellText(c));
    })));
    return el("div", {class: "axis-panel"}, el("h3", {}, `${h.teacher} · ${h.method}`),
              el("table", {class: "data heatmap", "data-method": h.method}, el("thead", {}, head), el("tbody", {}, rows)));
  }

  function renderAxes(d) {
    const hasAxes = Object.keys(d.table.axes || {}).length > 0;
    $("axes-card").hidden = $("baseline-card").hidden = !hasAxes;
    $("t6-card").hidden = $("welch-card").hidden = hasAxes;
    if (!hasAxes) return;
    const cells = new Map(d.table.cells.map((c) => [c.key, c]));
    const nTries = Math.max(d.study.seeds.length, ...d.table.cells.map((c) => c.tries.length));
    const axes = Object.entries(d.table.axes).map(([a, v]) => `${a} ∈ {${v.join(", ")}}`).join(" × ");
    $("axes-hint").textContent = `${axes} · ${d.study.cells_complete} of ${d.study.cells_total} cells complete`;
    if (d.heatmaps.length) {
      const means = d.table.cells.filter((c) => c.mean !== null).map((c) => c.mean);
      replace($("axes-grids"), d.heatmaps.map((h) => heatmap(h, cells, Math.min(...means), Math.max(...means))));
      $("axes-caption").textContent = "Mean FID ± sample std (ddof = 1) per cell; green: lowest, red: highest. " +
        "A method that ignores an axis has one cell, repeated across it.";
    } else {
      replace($("axes-grids"), d.panels.map((p) => panelGrid(d, p, cells, nTries)));
      $("axes-caption").textContent = "One Table-6 grid per axis value, best mean per teacher in bold; a method that " +
        "ignores the axis stands in every grid with the same cell.";
    }
    const select = $("baseline");
    const options = d.table.cells.map((c) => el("option", {value: c.key, selected: c.key === d.baseline}, cellLabel(c)));
    replace(select, options);
    const head = el("thead", {}, el("tr", {}, el("th", {}, "Cell"), el("th", {class: "num"}, "n / baseline n"),
      el("th", {class: "num"}, "mean"), el("th", {class: "num"}, "baseline mean"), el("th", {class: "num"}, "t"),
      el("th", {class: "num"}, "df"), el("th", {class: "num"}, "p")));
    const rows = d.versus_baseline.map((w) => el("tr", {"data-key": w.key_a},
      el("td", {class: "mono"}, cellLabel(cells.get(w.key_a))), el("td", {class: "num"}, `${w.n_a} / ${w.n_b}`),
      el("td", {class: "num"}, num(w.mean_a)), el("td", {class: "num"}, num(w.mean_b)),
      el("td", {class: "num"}, num(w.statistic, 3)), el("td", {class: "num"}, num(w.df, 2)),
      el("td", {class: "num pvalue" + (w.pvalue !== null && w.pvalue < 0.05 ? " sig" : ""), title: w.reason || ""},
         w.pvalue === null ? (w.reason || "") : w.pvalue < 1e-4 ? w.pvalue.toExponential(2) : w.pvalue.toFixed(4))));
    replace($("versus-baseline"), head, el("tbody", {}, rows));
  }

  function baselineParam() {
    return new URLSearchParams(location.search).get("baseline");
  }

  $("baseline").addEventListener("change", (event) => {
    const url = new URL(location.href);
    url.searchParams.set("baseline", event.target.value);
    history.replaceState(null, "", url);
    refresher.now();
  });

  // --- polling ---------------------------------------------------------------------------------

  let paperShown = false;
  async function refresh() {
    const baseline = baselineParam();
    const query = baseline ? `?baseline=${encodeURIComponent(baseline)}` : "";
    const r = await api("GET", `/api/studies/${studyId}/dashboard${query}`);
    if (!r.ok) {
      replace($("study-sub"), r.status === 404 ? `Study ${studyId} does not exist.` : LP.errorText(r));
      return r.status !== 404;
    }
    const d = r.data;
    threshold = d.collapse_threshold;
    renderHead(d);
    renderOurTable(d);
    renderPlots(d);
    renderWelch(d);
    renderAxes(d);
    if (!paperShown) {
      paperShown = true;
      await renderPaper();
    }
    // an ended study no longer changes by itself (a new baseline refreshes at once)
    return d.study.status !== "ended";
  }

  const refresher = poll(refresh, LP.data.poll_ms);
})();
