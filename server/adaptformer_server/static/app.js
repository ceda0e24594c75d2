// The AdaptFormer Serve playground: plain JavaScript against the HTTP API (no build step, no network but the server).
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "adaptformer-api-key";
let adapters = [];
let files = [];
let samples = [];

function headers() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(method, path, body) {
  const response = await fetch(path, { method, body, headers: headers() });
  let payload = null;
  try { payload = await response.json(); } catch (e) { payload = null; }
  if (!response.ok) {
    const err = payload && payload.error;
    const message = err ? (err.message || err) : "HTTP " + response.status;
    throw new Error(message + " (" + response.status + ")");
  }
  return payload;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fmtBytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}

function currentTask() {
  const name = $("#task").value;
  return adapters.find((a) => a.task === name) || null;
}

function describeTask() {
  const a = currentTask();
  const info = $("#task-info");
  if ($("#task").value === "*") {
    info.textContent = "every image task on the same input, in one request";
  } else if (a) {
    const what = a.modality === "clip" ? `clip task: ${a.frames} frames (one GIF/WebP or ${a.frames} images)` : "image task";
    const parts = [a.description, what, `${a.num_classes} classes`, `version ${a.version}`].filter(Boolean);
    const note = a.input && a.input.note ? ` — expects ${a.input.note}` : "";
    info.textContent = parts.join(" · ") + note;
  } else {
    info.textContent = "";
  }
  renderSamples();
  updateButton();
}

async function loadSamples() {
  try {
    samples = (await (await fetch("/ui/examples")).json()).examples || [];
  } catch (e) {
    samples = [];
  }
  renderSamples();
}

// One button per sample input of the chosen task (the demo tasks ship one per class): a first answer in one click.
function renderSamples() {
  const box = $("#samples");
  const mine = samples.filter((s) => s.task === $("#task").value);
  box.replaceChildren();
  box.hidden = !mine.length;
  if (!mine.length) return;
  box.append(el("span", { class: "muted", text: "Try a sample:" }));
  for (const s of mine) {
    const button = el("button", { class: "sample", "data-file": s.file, title: s.file, text: s.label });
    button.addEventListener("click", () => trySample(s));
    box.append(button);
  }
}

async function trySample(s) {
  const response = await fetch("/ui/examples/" + encodeURIComponent(s.file));
  const blob = await response.blob();
  setFiles([new File([blob], s.file, { type: blob.type })]);
  await predict();
}

function updateButton() {
  $("#predict").disabled = !files.length || !$("#task").value;
}

async function refreshState() {
  try {
    const r = await fetch("/readyz");
    const body = await r.json();
    $("#server-state").textContent = r.ok ? `ready · ${body.backbone} · ${body.adapters} adapters` : `server ${body.status}`;
  } catch (e) {
    $("#server-state").textContent = "server unreachable";
  }
}

async function loadAdapters() {
  try {
    adapters = (await api("GET", "/adapters")).adapters;
  } catch (e) {
    adapters = [];
    $("#status").textContent = "cannot list adapters: " + e.message;
    $("#status").className = "error";
  }
  const select = $("#task");
  const previous = select.value;
  select.replaceChildren();
  for (const a of adapters) {
    const kind = a.modality === "clip" ? `clip ×${a.frames}` : "image";
    select.append(el("option", { value: a.task, text: `${a.task} (${kind}, ${a.num_classes} classes)` }));
  }
  if (adapters.some((a) => a.modality === "image")) {
    select.append(el("option", { value: "*", text: "* every image task" }));
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  describeTask();
  renderTable();
}

function renderTable() {
  const body = $("#adapters tbody");
  body.replaceChildren();
  for (const a of adapters) {
    const del = el("button", { class: "danger", "data-task": a.task, text: "Delete" });
    del.addEventListener("click", () => removeAdapter(a.task));
    body.append(el("tr", { "data-task": a.task },
      el("td", { text: a.task }),
      el("td", {}, el("code", { text: a.version })),
      el("td", { text: a.method }),
      el("td", { text: a.modality === "clip" ? `clip ×${a.frames}` : "image" }),
      el("td", { class: "num", text: String(a.num_classes), title: a.labels.join(", ") }),
      el("td", { class: "num", text: a.params.toLocaleString("en") }),
      el("td", { class: "num", text: a.percent_of_backbone.toFixed(2) + " %" }),
      el("td", { class: "num", text: fmtBytes(a.size_bytes) }),
      el("td", { text: a.resident ? "yes" : "no" }),
      el("td", { text: (a.created || "").replace("T", " ").slice(0, 16) }),
      el("td", {}, del)));
  }
}

function setFiles(list) {
  files = [...list].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|gif|webp|bmp|tiff?)$/i.test(f.name));
  const previews = $("#previews");
  previews.replaceChildren(...files.map((f) => el("img", { src: URL.createObjectURL(f), alt: f.name, title: f.name })));
  $("#status").textContent = files.length ? `${files.length} file${files.length > 1 ? "s" : ""} chosen` : "";
  $("#status").className = "muted";
  updateButton();
}

function renderResult(one, container) {
  const box = el("div", { class: "task-result", "data-task": one.task });
  box.append(el("h3", { text: `${one.task} · version ${one.version}` }));
  one.predictions.forEach((preds, i) => {
    if (one.predictions.length > 1) box.append(el("div", { class: "muted", text: files[i] ? files[i].name : `input ${i + 1}` }));
    const list = el("div", { class: "bars" });
    for (const p of preds) {
      const bar = el("div", { class: "bar" });
      bar.style.width = (100 * p.score).toFixed(1) + "%";
      list.append(el("div", { class: "bar-row" },
        el("span", { class: "label", text: p.label, title: p.label }),
        el("div", { class: "bar-track" }, bar),
        el("span", { class: "score", text: p.score.toFixed(3) })));
    }
    box.append(list);
  });
  container.append(box);
}

async function predict() {
  const task = $("#task").value;
  const a = currentTask();
  const form = new FormData();
  const field = a && a.modality === "clip" && files.length > 1 ? "frame" : "image";
  for (const f of files) form.append(field, f, f.name);
  const query = new URLSearchParams({ task, top_k: $("#top-k").value || "5" });
  $("#predict").disabled = true;
  $("#status").textContent = "predicting…";
  $("#status").className = "muted";
  const started = performance.now();
  try {
    const answer = await api("POST", "/predict?" + query, form);
    const results = answer.results || [answer];
    $("#version").textContent = results.map((r) => r.version).join(", ");
    $("#latency").textContent = answer.latency_ms.toFixed(1);
    $("#roundtrip").textContent = (performance.now() - started).toFixed(1);
    const bars = $("#bars");
    bars.replaceChildren();
    for (const r of results) renderResult(r, bars);
    $("#result").hidden = false;
    $("#status").textContent = "done";
  } catch (e) {
    $("#status").textContent = e.message;
    $("#status").className = "error";
  } finally {
    updateButton();
  }
}

async function uploadAdapter(event) {
  event.preventDefault();
  const file = $("#upload-file").files[0];
  const status = $("#admin-status");
  if (!file) { status.textContent = "choose a .safetensors file first"; return; }
  const form = new FormData();
  form.append("file", file, file.name);
  const task = $("#upload-task").value.trim();
  if (task) form.append("task", task);
  try {
    const r = await api("POST", "/adapters", form);
    status.textContent = `installed ${r.adapter.task} (version ${r.adapter.version})` + (r.replaced ? `, replaced ${r.previous_version}` : "");
    status.className = "muted";
    await loadAdapters();
  } catch (e) {
    status.textContent = "upload failed: " + e.message;
    status.className = "error";
  }
}

async function removeAdapter(task) {
  const status = $("#admin-status");
  if (!window.confirm(`Delete adapter ${task}?`)) return;
  try {
    const r = await api("DELETE", "/adapters/" + encodeURIComponent(task));
    status.textContent = `deleted ${r.task} (version ${r.version})`;
    status.className = "muted";
    await loadAdapters();
  } catch (e) {
    status.textContent = "delete failed: " + e.message;
    status.className = "error";
  }
}

// -- New task: labelled images per class -> POST /tasks/{task}/train, then the job's events (SSE over fetch, so
// that the key goes in a header), then a try on the predict tab.
let trainJob = null;

function addClassRow(name) {
  const row = el("div", { class: "class-row" });
  const label = el("input", { class: "class-name", type: "text", placeholder: "class name", value: name || "" });
  const input = el("input", { class: "class-files", type: "file", accept: "image/*", multiple: "" });
  const thumbs = el("div", { class: "thumbs" });
  const drop = el("div", { class: "drop", tabindex: "0" },
    el("span", { class: "muted", text: "drop images of this class, or " }),
    el("label", { class: "link" }, "choose", input), thumbs);
  row.files = [];
  const take = (list) => {
    row.files = row.files.concat([...list].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|gif|webp|bmp|tiff?)$/i.test(f.name)));
    thumbs.replaceChildren(...row.files.slice(0, 40).map((f) => el("img", { src: URL.createObjectURL(f), title: f.name })),
      el("span", { class: "muted count", text: ` ${row.files.length} image${row.files.length === 1 ? "" : "s"}` }));
  };
  input.style.display = "none";
  input.addEventListener("change", (e) => take(e.target.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); take(e.dataTransfer.files); });
  row.append(label, drop);
  $("#train-classes").append(row);
}

function trainMessage(text, error) {
  $("#train-message").textContent = text;
  $("#train-message").className = error ? "error" : "muted";
}

function showJob(job) {
  trainJob = job;
  $("#train-job").hidden = false;
  $("#train-id").textContent = job.job;
  $("#train-status").textContent = job.status;
  $("#train-epoch").textContent = `${job.epoch}/${job.epochs}`;
  $("#train-progress").value = job.epochs ? job.epoch / job.epochs : 0;
  $("#train-loss").textContent = job.loss == null ? "–" : job.loss.toFixed(3);
  $("#train-val").textContent = job.val_top1 == null ? "–" : job.val_top1.toFixed(3);
  $("#train-eta").textContent = job.eta_s == null ? "–" : `${Math.round(job.eta_s)} s`;
  const over = ["succeeded", "failed", "cancelled"].includes(job.status);
  $("#train-cancel").hidden = over;
  $("#train-start").disabled = !over;
  $("#train-try").hidden = job.status !== "succeeded";
  if (job.status === "succeeded") trainMessage(`trained ${job.task}: version ${job.version}, validation accuracy ${(job.val_top1 || 0).toFixed(3)}`);
  else if (job.status === "failed") trainMessage(`job failed: ${job.error}`, true);
  else if (job.status === "cancelled") trainMessage("job cancelled; nothing was registered");
  else trainMessage(job.status === "queued" ? "waiting for the trainer…" : "training…");
}

async function watchJob(id) {
  const response = await fetch(`/jobs/${encodeURIComponent(id)}/events`, { headers: headers() });
  if (!response.ok || !response.body) throw new Error("cannot watch the job (" + response.status + ")");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (chunk.startsWith("event: end")) return;
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) showJob(JSON.parse(data));
    }
  }
}

async function startTraining() {
  const task = $("#train-task").value.trim();
  if (!task) { trainMessage("name the task first", true); return; }
  const form = new FormData();
  let classes = 0;
  for (const row of document.querySelectorAll("#train-classes .class-row")) {
    const label = row.querySelector(".class-name").value.trim();
    if (!label || !row.files.length) continue;
    classes += 1;
    for (const f of row.files) { form.append("image", f, f.name); form.append("label", label); }
  }
  if (classes < 2) { trainMessage("give at least two classes a name and some images", true); return; }
  const query = new URLSearchParams({ method: $("#train-method").value, epochs: $("#train-epochs").value || "20" });
  $("#train-start").disabled = true;
  trainMessage("uploading the examples…");
  try {
    const job = await api("POST", `/tasks/${encodeURIComponent(task)}/train?` + query, form);
    showJob(job);
    await watchJob(job.job);
    showJob(await api("GET", `/jobs/${encodeURIComponent(job.job)}`));
  } catch (e) {
    trainMessage("training failed: " + e.message, true);
    $("#train-start").disabled = false;
  }
}

async function cancelTraining() {
  if (!trainJob) return;
  try { showJob(await api("DELETE", `/jobs/${encodeURIComponent(trainJob.job)}`)); } catch (e) { trainMessage(e.message, true); }
}

async function tryTrained() {
  showTab("predict");
  await loadAdapters();
  $("#task").value = trainJob.task;
  describeTask();
}

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  $("#panel-predict").hidden = name !== "predict";
  $("#panel-adapters").hidden = name !== "adapters";
  $("#panel-train").hidden = name !== "train";
  if (name === "adapters") loadAdapters();
}

function init() {
  $("#api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("#api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, $("#api-key").value.trim());
    loadAdapters();
  });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("#task").addEventListener("change", describeTask);
  $("#file").addEventListener("change", (e) => setFiles(e.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setFiles(e.dataTransfer.files); });
  $("#predict").addEventListener("click", predict);
  $("#upload").addEventListener("submit", uploadAdapter);
  addClassRow("");
  addClassRow("");
  $("#train-add").addEventListener("click", () => addClassRow(""));
  $("#train-start").addEventListener("click", startTraining);
  $("#train-cancel").addEventListener("click", cancelTraining);
  $("#train-try").addEventListener("click", tryTrained);
  refreshState();
  loadAdapters();
  loadSamples();
}

init();
