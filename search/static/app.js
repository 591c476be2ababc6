// medcbir search page: upload a query, optional region, filters; results; click one for RELAX.
"use strict";
const $ = (id) => document.getElementById(id);
let queryFile = null, crop = null, token = null, dragStart = null;

function showError(text) { $("error").textContent = text; $("error").hidden = !text; }

async function loadInfo() {
  const r = await fetch("/api/info");
  const info = await r.json();
  $("info").textContent = `${info.method} · ${info.n_items} items · ${info.search_space} · ` +
    `${info.index.kind} index`;
  for (const name of info.labels) {
    const o = document.createElement("option"); o.value = name; o.textContent = name; $("label").appendChild(o);
  }
  $("k").max = info.max_k;
}

async function runSearch() {
  if (!queryFile) { showError("choose a query file first"); return; }
  showError("");
  $("status").textContent = "searching…";
  const form = new FormData();
  form.append("file", queryFile, queryFile.name);
  form.append("k", $("k").value);
  if (!$("slice-row").hidden) form.append("slice", $("slice").value);
  if (crop) form.append("crop", crop.map((v) => v.toFixed(4)).join(","));
  form.append("patients", $("patients").value);
  if ($("patient").value) form.append("patient", $("patient").value);
  if ($("label").value) form.append("label", $("label").value);
  const r = await fetch("/api/search", { method: "POST", body: form });
  const body = await r.json();
  $("status").textContent = "";
  if (!r.ok) { showError(`${r.status}: ${body.detail}`); $("results").replaceChildren(); return; }
  showQuery(body.query);
  showResults(body.results);
}

function showQuery(q) {
  token = q.token;
  $("query-panel").hidden = false;
  $("query-name").textContent = q.file;
  $("query-meta").textContent = `(${q.kind}${q.modality ? " " + q.modality : ""}, ${q.width}×${q.height}` +
    `${q.n_slices > 1 ? `, slice ${q.slice + 1}/${q.n_slices}` : ""})`;
  $("query-image").src = q.display;
  $("model-input").src = q.model_input;
  if (q.patient_id && !$("patient").value) $("patient").value = q.patient_id;
  if (q.n_slices > 1) {
    $("slice-row").hidden = false; $("slice").max = q.n_slices - 1; $("slice").value = q.slice;
    $("slice-value").textContent = q.slice;
  }
}

function showResults(results) {
  $("explanation").hidden = true;
  const cards = results.map((r) => {
    const card = document.createElement("div");
    card.className = "result"; card.dataset.id = r.id;
    const img = document.createElement("img");
    img.src = `/api/items/${r.id}/thumbnail.png`; img.alt = `item ${r.id}`;
    const text = document.createElement("div");
    text.innerHTML = `#${r.rank} <span class="distance">d=${r.distance.toFixed(4)}</span><br>` +
      `<span class="label"></span><br>patient <span class="patient"></span>`;
    text.querySelector(".label").textContent = (r.label_names || []).join(", ") || "-";
    text.querySelector(".patient").textContent = r.patient_id || "-";
    card.append(img, text);
    card.title = r.source || "";
    card.addEventListener("click", () => explain(r, card));
    return card;
  });
  $("results").replaceChildren(...cards);
  $("status").textContent = `${results.length} results`;
}

async function explain(r, card) {
  document.querySelectorAll(".result.selected").forEach((c) => c.classList.remove("selected"));
  card.classList.add("selected");
  $("status").textContent = "explaining…";
  const resp = await fetch("/api/explain", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token, id: r.id }) });
  const body = await resp.json();
  $("status").textContent = "";
  if (!resp.ok) { showError(`${resp.status}: ${body.detail}`); return; }
  $("explain-query").src = body.query; $("explain-result").src = body.result;
  $("explain-caption").textContent = `result #${r.rank} (item ${r.id})`;
  $("explanation").hidden = false;
}

function relative(ev) {
  const box = $("query-image").getBoundingClientRect();
  return [Math.min(Math.max((ev.clientX - box.left) / box.width, 0), 1),
          Math.min(Math.max((ev.clientY - box.top) / box.height, 0), 1)];
}

function drawCrop(c) {
  const b = $("crop-box"), img = $("query-image");
  if (!c) { b.hidden = true; return; }
  b.hidden = false;
  b.style.left = `${c[0] * img.width}px`; b.style.top = `${c[1] * img.height}px`;
  b.style.width = `${(c[2] - c[0]) * img.width}px`; b.style.height = `${(c[3] - c[1]) * img.height}px`;
}

$("canvas-wrap").addEventListener("mousedown", (ev) => { ev.preventDefault(); dragStart = relative(ev); });
window.addEventListener("mousemove", (ev) => {
  if (!dragStart) return;
  const p = relative(ev);
  drawCrop([Math.min(dragStart[0], p[0]), Math.min(dragStart[1], p[1]), Math.max(dragStart[0], p[0]),
            Math.max(dragStart[1], p[1])]);
});
window.addEventListener("mouseup", (ev) => {
  if (!dragStart) return;
  const p = relative(ev);
  const c = [Math.min(dragStart[0], p[0]), Math.min(dragStart[1], p[1]), Math.max(dragStart[0], p[0]),
             Math.max(dragStart[1], p[1])];
  dragStart = null;
  if (c[2] - c[0] > 0.02 && c[3] - c[1] > 0.02) { crop = c; drawCrop(crop); runSearch(); }
});
$("clear-crop").addEventListener("click", () => { crop = null; drawCrop(null); if (queryFile) runSearch(); });
$("file").addEventListener("change", () => {
  queryFile = $("file").files[0] || null; crop = null; drawCrop(null);
  $("slice-row").hidden = true; $("patient").value = "";
  if (queryFile) runSearch();
});
$("slice").addEventListener("change", () => { $("slice-value").textContent = $("slice").value; runSearch(); });
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });
loadInfo();
