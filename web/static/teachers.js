// Teachers page: registered teachers with size and FID (of their training job); register or train one.
"use strict";

(function () {
  const {el, replace, api, badge, progress, int, num, time, poll, bindForm, fillSelect} = LP;
  const tbody = document.querySelector("#teachers tbody");

  function row(t, job) {
    let train = "";
    if (job) {
      const p = job.progress;
      const fraction = p.fraction !== null ? p.fraction : job.status === "succeeded" ? 1 : 0;
      train = el("a", {href: `/jobs/${job.id}`, title: `job #${job.id}: ${job.status}`},
                 progress(fraction, `#${job.id} ${job.status === "running" ? Math.round(fraction * 100) + "%" : job.status}`, job.status));
    }
    const from = t.source === "pruned" ? `${t.base_teacher} at ${t.prune_ratio}` : t.source === "preset" ? `preset ${t.preset}`
      : t.source === "shipped" ? `shipped ${t.folder}` : t.folder ? `folder ${t.folder}` : "";
    return el("tr", {"data-teacher": t.name},
      el("td", {class: "mono"}, t.name),
      el("td", {}, badge(t.status, t.reason || null)),
      el("td", {class: "muted"}, t.source),
      el("td", {class: "num"}, t.parameters ? int(t.parameters) : ""),
      el("td", {class: "num", title: job ? job.fid_metric || "scored when its training ends"
                                           : "a registered folder: not scored here (its FID is the one you know)"},
         job && job.fid !== null ? num(job.fid) : el("span", {class: "faint"}, "—")),
      el("td", {class: "mono"}, t.dataset || ""),
      el("td", {class: "mono small"}, from),
      el("td", {}, train),
      el("td", {class: "muted small"}, time(t.created_at)));
  }

  async function refresh() {
    const [teachers, jobs] = await Promise.all([api("GET", "/api/teachers"), api("GET", "/api/jobs?kind=teacher&limit=500")]);
    if (!teachers.ok) {
      replace(tbody, el("tr", {class: "empty"}, el("td", {colspan: 9}, LP.errorText(teachers))));
      return true;
    }
    const byId = new Map((jobs.ok ? jobs.data.items : []).map((j) => [j.id, j]));
    replace(tbody, teachers.data.length ? teachers.data.map((t) => row(t, t.job_id ? byId.get(t.job_id) : null))
      : el("tr", {class: "empty"}, el("td", {colspan: 9}, "No teacher yet: train one below.")));
    return true;
  }

  async function fillSources() {
    const [teachers, datasets] = await Promise.all([api("GET", "/api/teachers"), api("GET", "/api/datasets")]);
    for (const select of document.querySelectorAll("select[data-source]")) {
      if (select.dataset.source === "teachers" && teachers.ok) {
        fillSelect(select, teachers.data, {value: (t) => t.name, disabled: (t) => t.status === "failed",
          label: (t) => `${t.name} — ${t.parameters ? LP.params(t.parameters) : "?"} params${t.status === "ready" ? "" : " · " + t.status}`,
          empty: "no teacher registered yet"});
      } else if (select.dataset.source === "datasets" && datasets.ok) {
        fillSelect(select, datasets.data, {value: (d) => d.name, label: (d) => `${d.name} (${d.kind}, ${d.resolution || "?"}px)`});
      }
    }
  }

  // Tabs: one form visible at a time.
  const tabs = document.querySelectorAll(".tabs button");
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      tabs.forEach((t) => t.classList.toggle("active", t === tab));
      for (const form of document.querySelectorAll("form[data-source-kind]")) {
        form.hidden = form.dataset.sourceKind !== tab.dataset.tab;
      }
    });
  }

  for (const form of document.querySelectorAll("form[data-source-kind]")) {
    bindForm(form, {
      url: "/api/teachers",
      build: (body) => Object.assign({source: form.dataset.sourceKind}, body),
      onSuccess: (teacher) => {
        LP.toast(teacher.status === "training" ? `teacher ${teacher.name}: training queued (job #${teacher.job_id})`
                                               : `teacher ${teacher.name} registered`, "ok");
        form.reset();
        LP.clearErrors(form);
        refresher.now();
        fillSources();
      },
    });
  }

  fillSources();
  const refresher = poll(refresh, LP.data.poll_ms * 2);
})();
