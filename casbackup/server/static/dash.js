// casbackup dashboard: forms go to the JSON API; jobs update live from /api/events.
// No framework, no build step: this file is shipped as is.
"use strict";

(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // ------------------------------------------------------------------ forms -> API
  // <form data-api="/api/x" [data-method="DELETE"] [data-then="job|reload|stay|token|goto:/p"]
  //       [data-confirm="text"]>; fields become a JSON object. data-type="bool" -> true/false,
  // "list" -> comma-separated list (null when empty, [] with data-empty-list), "lines" -> one
  // item a line, "json" -> the value parsed, "int" -> number; data-optional -> null
  // when empty. The CSRF token travels in the X-CSRF-Token header, as the API expects.
  function formBody(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.name === "csrf_token" || el.disabled) continue;
      if ((el.type === "radio") && !el.checked) continue;
      const type = el.dataset.type;
      let value = el.value;
      if (el.type === "checkbox") value = el.checked;
      else if (type === "bool") value = value === "true";
      else if (type === "int") value = value === "" ? null : Number(value);
      else if (type === "json") value = JSON.parse(value);
      else if (type === "lines") value = value.split("\n").map((s) => s.trim()).filter(Boolean);
      else if (type === "list") {
        const items = value.split(",").map((s) => s.trim()).filter(Boolean);
        value = items.length || el.hasAttribute("data-empty-list") ? items : null;
      } else if (el.hasAttribute("data-optional") && value === "") value = null;
      body[el.name] = value;
    }
    return body;
  }

  function showError(form, text) {
    const box = form.querySelector(".error");
    if (box) { box.textContent = text; box.hidden = false; } else { window.alert(text); }
  }

  // The question, then what the chosen options will do (a checked option's data-say; {target}
  // is the value of the form's target field): the user confirms the choice, not just "OK".
  function confirmText(form) {
    const target = form.elements.target ? form.elements.target.value : "";
    const said = [...form.querySelectorAll("input[data-say]:checked")]
      .map((el) => el.dataset.say.replace("{target}", target));
    return [form.dataset.confirm, ...said].join("\n");
  }

  async function submit(event) {
    const form = event.target.closest("form[data-api]");
    if (!form) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(confirmText(form))) return;
    const method = (form.dataset.method || "POST").toUpperCase();
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const init = { method, credentials: "same-origin",
                     headers: { "X-CSRF-Token": csrf(), "Accept": "application/json" } };
      if (method !== "DELETE") {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(formBody(form));
      }
      const response = await fetch(form.dataset.api, init);
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      if (!response.ok) {
        let detail = data && data.detail;
        if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
        showError(form, detail || `${response.status} ${response.statusText}`);
        return;
      }
      const then = form.dataset.then || "reload";
      if (then === "job" && data && data.job_id) window.location.assign(`/jobs/${data.job_id}`);
      else if (then.startsWith("goto:")) window.location.assign(then.slice(5) || "/");
      else if (then === "token" && data && data.token) {
        const out = form.querySelector("[data-token-out]");
        out.querySelector("code").textContent = data.token;
        out.hidden = false;
      } else if (then === "stay") { /* the event stream updates the page */ }
      else window.location.reload();
    } catch (e) {
      showError(form, `the service did not answer: ${e}`);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
  document.addEventListener("submit", submit);

  // ------------------------------------------------------------------ live jobs
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  function size(n) {
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }
  function eta(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "";
    if (seconds < 60) return `${Math.round(seconds)} s left`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min left`;
    return `${(seconds / 3600).toFixed(1)} h left`;
  }
  // The rate: over the last few seconds of progress events, or, until two events are that far
  // apart, the average since the job started (its elapsed time as the server rendered it,
  // counted on from the page's load: no comparison of the two machines' clocks).
  const loaded = performance.now() / 1000;
  const last = new Map(); // job id -> {t, bytes}: the sample the rate is measured from

  function elapsedOf(box) {
    const at = parseFloat(box.dataset.elapsed);
    const since = parseFloat(box.dataset.renderedAt || loaded); // set when <main> is swapped in
    return isFinite(at) ? at + performance.now() / 1000 - since : NaN;
  }

  function showProgress(id, p) {
    const now = performance.now() / 1000;
    const prev = last.get(id);
    if (!prev || p.bytes_done < prev.bytes) last.set(id, { t: now, bytes: p.bytes_done });
    document.querySelectorAll(`[data-job-progress="${id}"]`).forEach((box) => {
      const bar = box.querySelector("progress");
      if (p.bytes_total) bar.value = Math.min(100, (100 * p.bytes_done) / p.bytes_total);
      else bar.removeAttribute("value"); // indeterminate while the total is unknown
      const files = p.files_total ? `${p.files_done}/${p.files_total}` : `${p.files_done}`;
      const bytes = p.bytes_total ? `${size(p.bytes_done)} of ${size(p.bytes_total)}` : size(p.bytes_done);
      const unit = p.unit || "file";  // what files_done counts: file, pack or snapshot
      const word = !p.files_total && p.files_done === 1 ? unit : unit + "s";
      box.querySelector(".pdetail").textContent = `${p.phase || ""} · ${files} ${word} · ${bytes}`;
      let rate = NaN;
      if (prev && now - prev.t >= 1 && p.bytes_done >= prev.bytes) rate = (p.bytes_done - prev.bytes) / (now - prev.t);
      else if (elapsedOf(box) >= 0.5) rate = p.bytes_done / elapsedOf(box);
      if (isFinite(rate)) {
        const left = p.bytes_total && rate > 0 ? (p.bytes_total - p.bytes_done) / rate : NaN;
        box.querySelector(".rate").textContent = `${size(rate)}/s${isFinite(left) ? " · " + eta(left) : ""}`;
      }
    });
    if (prev && now - prev.t > 5) last.set(id, { t: now, bytes: p.bytes_done });
  }

  // A running job's duration counts up (from the elapsed time the page was rendered with).
  function tick() {
    document.querySelectorAll("[data-job-elapsed]").forEach((el) => {
      const seconds = elapsedOf(el);
      if (isFinite(seconds)) el.textContent = duration(seconds);
    });
  }
  function duration(s) {
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function showState(job) {
    document.querySelectorAll(`[data-job-state="${job.id}"]`).forEach((el) => {
      el.textContent = job.state;
      el.className = `state ${job.state}`;
    });
    if (job.state !== "running") {
      document.querySelectorAll(`[data-job-elapsed="${job.id}"]`).forEach((el) => { el.removeAttribute("data-job-elapsed"); });
    }
    if (job.state === "succeeded") {
      document.querySelectorAll(`[data-job-progress="${job.id}"] progress`).forEach((bar) => { bar.value = 100; });
    }
  }

  // Now as "YYYY-MM-DD HH:MM ZONE" in the service's zone (the page's data-tz), as the
  // server writes the lines above it; UTC where the browser does not know that zone.
  function zonedNow(tz) {
    const now = new Date();
    try {
      const parts = Object.fromEntries(new Intl.DateTimeFormat("en-GB", {
        timeZone: tz || "UTC", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short",
      }).formatToParts(now).map((p) => [p.type, p.value]));
      return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute} ${parts.timeZoneName}`;
    } catch (e) {
      return `${now.toISOString().slice(0, 16).replace("T", " ")} UTC`;
    }
  }

  function appendLog(data) {
    document.querySelectorAll(`[data-job-log="${data.id}"]`).forEach((pre) => {
      pre.append(`${zonedNow(pre.dataset.tz)} ${data.level}: ${data.message}\n`);
    });
  }

  // After a job ends, swap in the page's fresh <main> (result, badges) without a reload.
  async function refreshMain() {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.querySelector("main");
    if (!fresh) return;
    const now = String(performance.now() / 1000);
    fresh.querySelectorAll("[data-elapsed]").forEach((el) => { el.dataset.renderedAt = now; });
    document.querySelector("main").replaceWith(fresh);
  }

  function watched(id) {
    const page = document.querySelector("[data-job-page]");
    return page && page.dataset.jobPage === String(id);
  }

  function listen() {
    if (!document.body.dataset.live || !window.EventSource) return;
    const source = new EventSource("/api/events");
    let pending = null;
    const refreshSoon = () => {
      if (pending) return;
      pending = setTimeout(() => { pending = null; refreshMain(); }, 300);
    };
    source.addEventListener("job.progress", (e) => {
      const d = JSON.parse(e.data);
      if (d.progress) showProgress(d.id, d.progress);
    });
    source.addEventListener("job.started", (e) => {
      const job = JSON.parse(e.data);
      showState(job);
      if (watched(job.id)) refreshSoon(); // its start time, duration and cancel button
    });
    source.addEventListener("job.log", (e) => appendLog(JSON.parse(e.data)));
    source.addEventListener("job.finished", (e) => {
      const job = JSON.parse(e.data);
      showState(job);
      if (watched(job.id) || !document.querySelector("[data-job-page]")) refreshSoon();
    });
    source.addEventListener("job.created", () => {
      if (!document.querySelector("[data-job-page]")) refreshSoon();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    listen();
    if (document.body.dataset.live) window.setInterval(tick, 1000);
    // A job that finished between rendering and the stream connecting: catch up once.
    const page = document.querySelector("[data-job-page]");
    if (page && page.dataset.final === "0") {
      fetch(`/api/jobs/${page.dataset.jobPage}`, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : null))
        .then((job) => { if (job && !["queued", "running"].includes(job.state)) refreshMain(); });
    }
  });
})();
