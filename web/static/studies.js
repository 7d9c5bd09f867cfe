// Studies page: every study with its status and how far it is.
"use strict";

(function () {
  const {el, replace, api, badge, progress, int, time, poll} = LP;
  const tbody = document.querySelector("#studies tbody");
  const ENDED = LP.ENDED;

  function row(s) {
    const ended = ENDED.reduce((a, k) => a + (s.status_counts[k] || 0), 0);
    return el("tr", {"data-study": s.id},
      el("td", {class: "mono"}, el("a", {href: `/studies/${s.id}`}, "#" + s.id)),
      el("td", {}, el("a", {href: `/studies/${s.id}`}, s.name)),
      el("td", {}, badge(s.status)),
      el("td", {}, progress(s.jobs ? ended / s.jobs : 0, `${ended} / ${s.jobs}`, s.status === "ended" ? "succeeded" : "running")),
      el("td", {class: "num"}, `${s.cells_complete} / ${s.cells_total}`),
      el("td", {class: "mono small"}, s.teachers.join(", ")),
      el("td", {class: "mono small"}, s.methods.join(", ")),
      el("td", {class: "num"}, s.seeds.length),
      el("td", {class: "num"}, int(s.options.steps)),
      el("td", {class: "muted small"}, time(s.created_at)));
  }

  poll(async () => {
    const r = await api("GET", "/api/studies?limit=200");
    if (!r.ok) {
      replace(tbody, el("tr", {class: "empty"}, el("td", {colspan: 10}, LP.errorText(r))));
      return true;
    }
    replace(tbody, r.data.items.length ? r.data.items.map(row)
      : el("tr", {class: "empty"}, el("td", {colspan: 10}, "No study yet. ", el("a", {href: "/studies/new"}, "Submit one"), ".")));
    return true;
  }, LP.data.poll_ms * 2);
})();
