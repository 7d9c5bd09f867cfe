// Job page: parameters, live progress and training curves (loss terms; beta1, beta0 and w), images, FID, log.
"use strict";

(function () {
  const {el, replace, api, badge, progress, duration, sig, num, int, elapsed, time, jobAction, poll, plot, ENDED,
         RETRYABLE} = LP;
  const jobId = Number(document.getElementById("job").dataset.jobId);
  const $ = (id) => document.getElementById(id);
  let job = null;
  let logOffset = 0;
  let imagesShownFor = null;

  const LOSS_TERMS = [
    ["loss_total", "total"], ["loss_diff", "L_diff"], ["loss_kd", "L_kd"], ["loss_feat", "L_feat"],
    ["coarse", "coarse"], ["fine", "fine"],
  ];

  function kv(table, rows) {
    replace(table, rows.filter((r) => r && r[1] !== null && r[1] !== undefined && r[1] !== "").map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", {}, v))));
  }

  function stat(k, v) {
    return el("div", {class: "stat"}, el("span", {class: "v"}, v === "" || v === null ? "—" : v), el("span", {class: "k"}, k));
  }

  function render(j) {
    replace($("job-status"), badge(j.status, j.reason || null));
    $("job-kind").textContent = j.kind === "teacher" ? "teacher training" : "distillation";
    const sub = j.kind === "teacher"
      ? [`trains teacher ${j.output_teacher}`, j.teacher ? ` (pruned from ${j.teacher})` : "", ` on ${j.dataset}`]
      : [`${j.teacher} → ${j.method}`, `, seed ${j.seed}`, `, student ratio ${j.student_ratio}`, ` on ${j.dataset}`];
    replace($("job-sub"), sub.join(""),
      j.study_id ? [" · study ", el("a", {href: `/studies/${j.study_id}`}, "#" + j.study_id)] : null);

    const actions = [];
    if (j.mlflow_url) actions.push(el("a", {class: "btn", href: j.mlflow_url, target: "_blank", rel: "noopener"}, "MLflow run ↗"));
    if (!ENDED.includes(j.status)) {
      actions.push(el("button", {class: "btn danger", type: "button", disabled: j.cancel_requested,
                                 onclick: () => jobAction(jobId, "cancel", refresher.now)},
                      j.cancel_requested ? "Cancelling…" : "Cancel"));
    }
    if (RETRYABLE.includes(j.status)) {
      actions.push(el("button", {class: "btn", type: "button", onclick: () => jobAction(jobId, "retry", () => {
        imagesShownFor = null;
        refresher.now();
      })}, "Retry"));
    }
    replace($("job-actions"), actions);

    const p = j.progress;
    const loss = j.metrics && j.metrics.loss_total;
    replace($("job-stats"),
      stat("step", p.step !== null ? `${int(p.step)} / ${int(p.total || j.steps)}` : `0 / ${int(j.steps)}`),
      stat(j.status === "queued" ? "waiting" : "elapsed", duration(elapsed(j)) || ""),
      stat("loss", loss !== undefined ? sig(loss) : ""),
      stat(j.fid_metric || "FID", j.fid !== null ? num(j.fid) : ""),
      stat(j.kind === "teacher" ? "parameters" : "student parameters", j.parameters ? int(j.parameters) : ""));
    const fraction = p.fraction !== null ? p.fraction : j.status === "succeeded" ? 1 : 0;
    const label = j.status === "queued" ? (j.waiting_for ? "waiting: " + j.waiting_for : "queued")
                                        : `${(fraction * 100).toFixed(0)}%`;
    replace($("job-progress"), progress(fraction, label, j.status));
    $("job-progress").firstChild.classList.add("big");
    $("job-reason").textContent = j.status !== "succeeded" && j.reason ? j.reason : "";

    const opts = Object.entries(j.options || {}).map(([k, v]) => [k, el("span", {class: "mono"}, v === null ? "default" : String(v))]);
    kv($("job-params"), [
      ["kind", j.kind], ["teacher", j.teacher], ["output teacher", j.output_teacher], ["dataset", j.dataset],
      ["method", j.method], ["seed", el("span", {class: "mono"}, j.seed)],
      ["student ratio", j.student_ratio !== null ? el("span", {class: "mono"}, j.student_ratio) : null],
      ["steps", el("span", {class: "mono"}, int(j.steps))], ...opts,
    ]);
    kv($("job-outcome"), [
      ["status", j.status], ["reason", j.reason],
      [j.fid_metric || "FID", j.fid !== null ? el("span", {class: "mono"}, num(j.fid, 4)) : null],
      ["parameters", j.parameters ? el("span", {class: "mono"}, int(j.parameters)) : null],
      ["diverged at step", j.diverged_step], ["resumed from step", j.resumed_from_step],
      ["attempts", `${j.attempts} of ${j.max_attempts}`], ["created", time(j.created_at)],
      ["started", time(j.started_at)], ["finished", time(j.finished_at)],
      // where the last attempt computed: a seed's FID depends on the processor
      ["computed on", j.environment ? el("span", {class: "mono", title: Object.entries(j.environment).map(([k, v]) => `${k} ${v}`).join("\n")},
        `${j.environment.gpu || j.environment.cpu || "?"} · torch ${j.environment.torch || "?"} · ${j.environment.threads || "?"} threads`) : null],
      ["MLflow run", j.mlflow_url ? el("a", {href: j.mlflow_url, target: "_blank", rel: "noopener"}, j.mlflow_run_id) : null],
    ]);
  }

  // --- curves ----------------------------------------------------------------------------------

  function line(steps, values, name, extra) {
    return Object.assign({x: steps, y: values, name, type: "scatter", mode: "lines", connectgaps: true,
                          line: {width: 1.6}}, extra || {});
  }

  async function refreshCurves() {
    const r = await api("GET", `/api/jobs/${jobId}/metrics?max_points=600`);
    if (!r.ok) return;
    const {steps, series, total_points: n} = r.data;
    $("curves-hint").textContent = n ? `${int(n)} logged steps${n > steps.length ? `, ${steps.length} shown` : ""}` : "";
    if (!steps.length) {
      const msg = job && job.status === "queued" ? "appears once the job runs" : "no metrics logged yet";
      for (const id of ["plot-loss", "plot-lift"]) {
        replace($(id), el("div", {class: "placeholder"}, msg));
      }
      return;
    }
    // Integer steps on the x axis: one tick per step for a short run, thousands separators for a long one.
    const stepAxis = steps[steps.length - 1] <= 10 ? {title: {text: "step"}, dtick: 1}
                                                   : {title: {text: "step"}, tickformat: ",d"};
    const losses = LOSS_TERMS.filter(([k]) => series[k]).map(([k, label]) => line(steps, series[k], label));
    const positive = losses.every((t) => t.y.every((v) => v === null || v > 0));
    plot($("plot-loss"), losses, {title: {text: "Loss terms", font: {size: 13}}, xaxis: stepAxis,
                                  yaxis: {type: positive ? "log" : "linear", title: {text: "loss"}}});
    if (series.slope_mean || series.w) {
      const traces = [];
      if (series.slope_mean) traces.push(line(steps, series.slope_mean, "β1 (slope)", {line: {color: "#1f77b4", width: 1.6}}));
      if (series.intercept_mean) traces.push(line(steps, series.intercept_mean, "β0 (intercept)", {line: {color: "#ff7f0e", width: 1.6}}));
      if (series.w) traces.push(line(steps, series.w, "w (adaptive weight)", {yaxis: "y2", line: {color: "#2ca02c", width: 1.6, dash: "dot"}}));
      plot($("plot-lift"), traces, {
        title: {text: "LIFT line: β1 → 1, β0 → 0; w rises as they align", font: {size: 13}},
        xaxis: stepAxis, yaxis: {title: {text: "β1, β0 (mean over groups)"}},
        yaxis2: {title: {text: "w"}, overlaying: "y", side: "right", range: [0, 1.05], showgrid: false,
                 tickmode: "linear", tick0: 0, dtick: 0.2},
        shapes: [{type: "line", xref: "paper", x0: 0, x1: 1, y0: 1, y1: 1, line: {color: "#1f77b4", width: 1, dash: "dash"}}],
        margin: {l: 56, r: 48, t: 36, b: 44},
      });
    } else {
      const traces = [];
      if (series.ts_distance) traces.push(line(steps, series.ts_distance, "teacher–student distance"));
      if (series.grad_norm) traces.push(line(steps, series.grad_norm, "gradient norm", {yaxis: "y2"}));
      plot($("plot-lift"), traces, {
        title: {text: "No LIFT line for this method: teacher–student distance", font: {size: 13}},
        xaxis: stepAxis, yaxis: {type: "log", title: {text: "Σ (u − s)²"}},
        yaxis2: {overlaying: "y", side: "right", showgrid: false, title: {text: "grad norm"}, tickmode: "auto"},
        margin: {l: 56, r: 48, t: 36, b: 44},
      });
    }
  }

  // --- images and log ---------------------------------------------------------------------------

  function image(box, name, alt, j) {
    const src = `/api/jobs/${jobId}/files/${name}?v=${encodeURIComponent(j.finished_at || "")}`;
    const img = el("img", {src, alt});
    img.addEventListener("error", () => replace(box, el("div", {class: "placeholder"},
      j.kind === "teacher" && name === "error_map.png" ? "no error map (only pruned teachers have a reference)" : `no ${name}`)));
    replace(box, img);
  }

  function refreshImages(j) {
    const key = j.status + (j.finished_at || "");
    if (imagesShownFor === key) return;
    imagesShownFor = key;
    if (j.status === "succeeded") {
      image($("img-samples"), "samples.png", "sample grid", j);
      image($("img-error"), "error_map.png", "error maps", j);
    } else {
      const msg = ENDED.includes(j.status) ? `none: the job ${j.status}` : "appears when training has ended";
      replace($("img-samples"), el("div", {class: "placeholder"}, msg));
      replace($("img-error"), el("div", {class: "placeholder"}, msg));
    }
  }

  async function refreshLog() {
    const r = await api("GET", `/api/jobs/${jobId}/logs?offset=${logOffset}&limit=2000`);
    if (!r.ok || !r.data.lines.length) return;
    const pre = $("job-log");
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
    pre.append(document.createTextNode(r.data.lines.join("\n") + "\n"));
    logOffset = r.data.next_offset;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // --- polling ----------------------------------------------------------------------------------

  let tick = 0;
  async function refresh() {
    const r = await api("GET", `/api/jobs/${jobId}`);
    if (!r.ok) {
      replace($("job-sub"), r.status === 404 ? `Job ${jobId} does not exist.` : LP.errorText(r));
      return r.status !== 404;
    }
    const wasEnded = job && ENDED.includes(job.status);
    job = r.data;
    render(job);
    refreshImages(job);
    const ended = ENDED.includes(job.status);
    // Curves every other round while running, and once more when the job ends.
    if (!ended ? tick % 2 === 0 : !wasEnded) await refreshCurves();
    await refreshLog();
    tick += 1;
    return !ended;  // an ended job changes no more; a retry from this page polls again (refresher.now)
  }

  const refresher = poll(refresh, LP.data.poll_ms);
})();
