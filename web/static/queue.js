// Queue page: every job with status, progress, elapsed time, current loss and FID; cancel and retry.
"use strict";

(function () {
  const {el, replace, api, badge, progress, duration, sig, num, elapsed, jobAction, poll, int, ENDED, RETRYABLE} = LP;
  const tbody = document.querySelector("#queue tbody");
  const total = document.getElementById("queue-total");
  const counts = document.getElementById("queue-counts");
  const filters = {
    status: document.getElementById("filter-status"),
    kind: document.getElementById("filter-kind"),
    limit: document.getElementById("filter-limit"),
  };
  const url = new URL(location.href);
  const study = url.searchParams.get("study");
  for (const key of ["status", "kind"]) {
    if (url.searchParams.get(key)) filters[key].value = url.searchParams.get(key);
  }
  if (study) {
    replace(document.getElementById("filter-study"), "study ", el("a", {href: `/studies/${study}`}, "#" + study), " · ",
      el("a", {href: "/queue"}, "all jobs"));
  }

  function progressCell(job) {
    const p = job.progress;
    if (job.status === "queued") {
      return job.waiting_for ? el("span", {class: "muted small"}, "waiting: " + job.waiting_for)
                             : el("span", {class: "muted small"}, "waiting for a worker");
    }
    if (job.status === "dispatched") {
      return el("span", {class: "muted small"}, "dispatched; waiting for a free worker");
    }
    const step = p.step === null ? 0 : p.step;
    const label = p.total ? `${int(step)} / ${int(p.total)}` : `${int(step)} / ${int(job.steps)}`;
    const fraction = p.fraction !== null ? p.fraction : job.status === "succeeded" ? 1 : 0;
    return progress(fraction, label, job.status);
  }

  function actions(job) {
    const out = [];
    if (!ENDED.includes(job.status)) {
      out.push(el("button", {class: "btn small danger", type: "button", disabled: job.cancel_requested,
                             title: job.cancel_requested ? "cancel requested; it stops at its next step" : "cancel this job",
                             onclick: () => jobAction(job.id, "cancel", refresher.now)},
                  job.cancel_requested ? "cancelling…" : "Cancel"));
    }
    if (RETRYABLE.includes(job.status)) {
      out.push(el("button", {class: "btn small", type: "button", title: "queue it again; it resumes from its checkpoint",
                             onclick: () => jobAction(job.id, "retry", refresher.now)}, "Retry"));
    }
    return out;
  }

  function row(job) {
    const loss = job.metrics && job.metrics.loss_total;
    const what = job.kind === "teacher" ? (job.output_teacher || "") : (job.teacher || "");
    const reason = job.reason && !["succeeded"].includes(job.status) ? job.reason : null;
    return el("tr", {"data-job": job.id, "data-status": job.status},
      el("td", {class: "mono"}, el("a", {href: `/jobs/${job.id}`}, "#" + job.id)),
      el("td", {}, badge(job.status, reason)),
      el("td", {class: "muted"}, job.kind),
      el("td", {}, job.study_id ? el("a", {href: `/studies/${job.study_id}`}, "#" + job.study_id) : ""),
      el("td", {class: "mono"}, what),
      el("td", {class: "mono"}, job.method || (job.kind === "teacher" ? "training" : "")),
      el("td", {class: "num"}, job.seed),
      el("td", {}, progressCell(job)),
      el("td", {class: "num"}, duration(elapsed(job))),
      el("td", {class: "num", title: "loss_total at the last report"}, loss !== undefined ? sig(loss) : ""),
      el("td", {class: "num", title: job.fid_metric || ""}, job.fid !== null ? num(job.fid) : ""),
      el("td", {class: "row-actions"}, actions(job)));
  }

  async function refresh() {
    const q = new URLSearchParams({limit: filters.limit.value});
    if (filters.status.value) q.set("status", filters.status.value);
    if (filters.kind.value) q.set("kind", filters.kind.value);
    if (study) q.set("study", study);
    // The table and the counts are asked for together and shown together, so they agree.
    const [r, counted] = await Promise.all([api("GET", "/api/jobs?" + q), fetchCounts()]);
    renderCounts(counted);
    if (!r.ok) {
      replace(tbody, el("tr", {class: "empty"}, el("td", {colspan: 12}, LP.errorText(r))));
      return true;
    }
    const items = r.data.items;
    total.textContent = `${int(items.length)} of ${int(r.data.total)} shown`;
    replace(tbody, items.length ? items.map(row)
                                : el("tr", {class: "empty"}, el("td", {colspan: 12}, "No jobs yet. ",
                                     el("a", {href: "/studies/new"}, "Submit a study"), ".")));
    return true;
  }

  // Jobs per status (one count query each).
  const STATUSES = ["running", "dispatched", "queued", ...ENDED];
  function fetchCounts() {
    return Promise.all(STATUSES.map((s) => {
      const q = new URLSearchParams({status: s, limit: 1});
      if (study) q.set("study", study);
      return api("GET", "/api/jobs?" + q);
    }));
  }

  function renderCounts(results) {
    replace(counts, STATUSES.map((s, i) => results[i].ok && results[i].data.total
      ? el("span", {class: `badge s-${s}`}, `${results[i].data.total} ${s}`) : null));
  }

  const refresher = poll(refresh, LP.data.poll_ms);
  for (const f of Object.values(filters)) {
    f.addEventListener("change", () => {
      const next = new URL(location.href);
      for (const key of ["status", "kind"]) {
        if (filters[key].value) next.searchParams.set(key, filters[key].value);
        else next.searchParams.delete(key);
      }
      history.replaceState(null, "", next);
      refresher.now();
    });
  }
})();
