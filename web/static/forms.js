// Submit pages (one job, one study): choices from the API, JSON to the API, errors next to their fields.
"use strict";

(function () {
  const {el, replace, api, params, bindForm, fillSelect} = LP;

  function teacherLabel(t) {
    const size = t.parameters ? params(t.parameters) + " params" : "size unknown";
    const state = t.status === "ready" ? "" : t.status === "training" ? " · training (jobs wait for it)" : " · failed";
    return `${t.name} — ${size}${state}`;
  }

  // Fill the <select data-source=...> of the page.
  async function fillSources(form, lists) {
    for (const select of form.querySelectorAll("select[data-source]")) {
      const source = select.dataset.source;
      if (source === "teachers") {
        fillSelect(select, lists.teachers, {value: (t) => t.name, label: teacherLabel, disabled: (t) => t.status === "failed",
                                            empty: "no teacher registered yet: see Teachers",
                                            none: select.dataset.none});
      } else if (source === "datasets") {
        fillSelect(select, lists.datasets, {value: (d) => d.name,
                                            label: (d) => `${d.name} (${d.kind}, ${d.resolution || "?"}px)`});
      }
    }
  }

  function methodChoice(m, kind, name, checked) {
    return el("label", {},
      el("input", {type: kind, name, value: m.name, checked}),
      el("span", {},
        el("span", {class: "choice-name"}, m.name),
        m.paper ? el("span", {class: "choice-tag"}, "paper") : null,
        el("div", {class: "choice-meta"}, m.description)));
  }

  function teacherChoice(t, checked) {
    const meta = [t.parameters ? params(t.parameters) + " parameters" : "size unknown", t.source,
                  t.status !== "ready" ? t.status : null].filter(Boolean).join(" · ");
    return el("label", {},
      el("input", {type: "checkbox", name: "teachers", value: t.name, checked, disabled: t.status === "failed"}),
      el("span", {}, el("span", {class: "choice-name"}, t.name), el("div", {class: "choice-meta"}, meta)));
  }

  async function loadLists() {
    const [teachers, datasets, methods] = await Promise.all([
      api("GET", "/api/teachers"), api("GET", "/api/datasets"), api("GET", "/api/methods")]);
    return {teachers: teachers.ok ? teachers.data : [], datasets: datasets.ok ? datasets.data : [],
            methods: methods.ok ? methods.data : []};
  }

  async function jobPage() {
    const form = document.getElementById("job-form");
    const lists = await loadLists();
    await fillSources(form, lists);
    replace(document.getElementById("choices-method"),
      lists.methods.map((m) => methodChoice(m, "radio", "method", m.paper)));
    bindForm(form, {url: "/api/jobs", onSuccess: (job) => { location.href = `/jobs/${job.id}`; }});
  }

  async function studyPage() {
    const form = document.getElementById("study-form");
    const lists = await loadLists();
    await fillSources(form, lists);
    const paper = await api("GET", "/api/reference/paper-table6");
    const table6 = paper.ok ? paper.data.methods : [];
    const methodBox = document.getElementById("choices-methods");
    replace(methodBox, lists.methods.map((m) => methodChoice(m, "checkbox", "methods", table6.includes(m.name))));
    const teacherBox = document.getElementById("choices-teachers");
    const usable = lists.teachers.filter((t) => t.status !== "failed");
    if (lists.teachers.length) {
      replace(teacherBox, lists.teachers.map((t) => teacherChoice(t, usable.length === 1 && t.status !== "failed")));
    } else {
      replace(teacherBox, el("div", {class: "empty"}, "No teacher registered yet: ",
        el("a", {href: "/teachers"}, "register or train one"), "."));
    }

    const axes = bindAxes(form);

    // How many jobs the study will be: teachers x methods x seeds (x axis values: at most, as a method that
    // ignores an option is not multiplied by its axis; the server counts exactly).
    const size = document.getElementById("study-size");
    function updateSize() {
      const body = LP.formBody(form);
      const seeds = typeof body.seeds === "number" ? body.seeds : Array.isArray(body.seeds) ? body.seeds.length : 0;
      const t = (body.teachers || []).length;
      const m = (body.methods || []).length;
      const combos = Object.values(axes.values()).reduce((a, v) => a * v.length, 1);
      const base = `${t} teacher${t === 1 ? "" : "s"} × ${m} method${m === 1 ? "" : "s"} × ${seeds} seed${seeds === 1 ? "" : "s"}`;
      size.textContent = combos > 1 ? `${base} × ${combos} axis values = at most ${t * m * seeds * combos} jobs`
                                    : `${base} = ${t * m * seeds} jobs`;
    }
    form.addEventListener("input", updateSize);
    form.addEventListener("change", updateSize);
    updateSize();
    bindForm(form, {url: "/api/studies", build: (body) => axes.build(body),
                    onSuccess: (study) => { location.href = `/studies/${study.id}`; }});
  }

  // One typed value of an axis: numbers and true/false/none as JSON, anything else as text (the server checks).
  function axisValue(text) {
    const t = text.trim();
    if (/^(true|false)$/i.test(t)) return t.toLowerCase() === "true";
    if (/^(none|null)$/i.test(t)) return null;
    if (t !== "" && !Number.isNaN(Number(t))) return Number(t);
    return t;
  }

  // The axes rows of the study form: option -> comma-separated values; {} when none is filled in.
  function bindAxes(form) {
    const rows = document.getElementById("axes-rows");
    const template = document.getElementById("axis-row");
    function add() {
      const row = template.content.firstElementChild.cloneNode(true);
      const taken = new Set(Array.from(rows.querySelectorAll(".axis-name")).map((s) => s.value));
      const select = row.querySelector(".axis-name");
      const free = Array.from(select.options).find((o) => !taken.has(o.value));
      if (free) select.value = free.value;
      row.querySelector(".axis-remove").addEventListener("click", () => {
        row.remove();
        form.dispatchEvent(new Event("input"));
      });
      rows.append(row);
      row.querySelector(".axis-values").focus();
    }
    document.getElementById("add-axis").addEventListener("click", add);
    function values() {
      const out = {};
      for (const row of rows.querySelectorAll(".axis-row")) {
        const text = row.querySelector(".axis-values").value;
        if (!text.trim()) continue;
        out[row.querySelector(".axis-name").value] = text.split(",").map(axisValue);
      }
      return out;
    }
    return {
      values,
      build(body) {
        const axes = values();
        if (Object.keys(axes).length) body.axes = axes;
        else delete body.axes;
        return body;
      },
    };
  }

  const page = document.body.dataset.page;
  if (page === "job_new") jobPage();
  else if (page === "study_new") studyPage();
})();
