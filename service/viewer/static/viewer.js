// The page: upload (drop or pick), progress, problems in plain words, the result (banner,
// findings, slices, router), the API key, and reopening a stored result by study UID.
// performance marks: headct:drop (files received), headct:banner (result shown),
// headct:slices-shown (first slice image drawn), headct:slices-loaded (every window's sheet), for
// measuring what a user waits for.

import { Problem, apiKey, asProblem, getJSON, hintFor, setApiKey } from "./api.js";
import { renderBanner, renderFindings } from "./findings.js";
import { RouterChart } from "./router.js";
import { SliceViewer } from "./slices.js";
import { filesFromDrop, filesFromPicker, triage } from "./upload.js";

const $ = (selector) => document.querySelector(selector);

const page = {
  dropzone: $("#dropzone"),
  progress: $("#progress"),
  progressBar: $("#progress-bar"),
  progressText: $("#progress-text"),
  problem: $("#problem"),
  banner: $("#banner"),
  result: $("#result"),
  findings: $("#findings"),
  findingsTitle: $("#findings-title"),
  positivesOnly: $("#positives-only"),
  criticalFirst: $("#critical-first"),
  keyForm: $("#key-form"),
  keyToggle: $("#key-toggle"),
  modelInfo: $("#model-info"),
  intro: $("#intro"),
};

const router = new RouterChart($("#router-chart"));
const slices = new SliceViewer(document, { onSlice: (i) => router.highlight(i) });
let current = null; // the TriageResult on screen
let busy = false;

// ---- problems --------------------------------------------------------------------------------

function showProblem(problem, context) {
  const body = problem.body;
  const box = page.problem;
  const parts = [document.createElement("h2"), document.createElement("p")];
  parts[0].textContent = context ? `${context}: ${body.title}` : body.title;
  parts[1].textContent = body.detail;
  parts[1].className = "detail";
  const hint = hintFor(problem);
  if (hint) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = hint;
    parts.push(p);
  }
  if (Array.isArray(body.series) && body.series.length) parts.push(seriesTable(body.series));
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = [
    body.status ? `status ${body.status}` : "",
    `code ${body.code}`,
    body.request_id ? `request ${body.request_id}` : "",
  ]
    .filter(Boolean)
    .join(" · ");
  parts.push(meta);
  box.replaceChildren(...parts);
  box.dataset.code = body.code;
  box.hidden = false;
  if (body.code === "unauthorized") openKeyForm();
}

function seriesTable(series) {
  const table = document.createElement("table");
  table.className = "series";
  const head = table.createTHead().insertRow();
  for (const title of ["Series", "Modality", "Plane", "Slices", "Why not used"]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const s of series) {
    const row = body.insertRow();
    const cells = [
      s.series_number ?? "?",
      s.modality ?? "?",
      s.plane ?? "?",
      s.slices ?? "?",
      (s.reasons || []).join("; ") || (s.eligible ? "eligible" : ""),
    ];
    for (const value of cells) row.insertCell().textContent = String(value);
  }
  return table;
}

function clearProblem() {
  page.problem.hidden = true;
  page.problem.replaceChildren();
  delete page.problem.dataset.code;
}

// ---- the result ------------------------------------------------------------------------------

function renderFindingsNow() {
  if (current) {
    renderFindings(page.findings, page.findingsTitle, current, {
      positivesOnly: page.positivesOnly.checked,
      criticalFirst: page.criticalFirst.checked,
    });
  }
}

function hideResult() {
  current = null;
  page.banner.hidden = true;
  page.result.hidden = true;
  page.intro.hidden = false;
  page.dropzone.classList.remove("compact");
}

function showResult(result) {
  current = result;
  renderBanner(page.banner, result);
  performance.mark("headct:banner");
  page.result.hidden = false;
  page.intro.hidden = true;
  page.dropzone.classList.add("compact");
  renderFindingsNow();
  router.render(result.router, result.slices.key_slice);
  slices.open(result);
}

// ---- upload ----------------------------------------------------------------------------------

function setProgress(text, fraction) {
  page.progress.hidden = false;
  page.progressText.textContent = text;
  if (fraction === null) page.progressBar.removeAttribute("value");
  else page.progressBar.value = fraction;
}

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1);
}

async function send(files) {
  if (busy) return;
  clearProblem();
  if (!files.length) {
    showProblem(
      { body: { code: "empty_upload", title: "No files", detail: "The drop held no file." } },
      "Not sent",
    );
    return;
  }
  busy = true;
  hideResult();
  page.dropzone.setAttribute("aria-busy", "true");
  let timer = null;
  const total = files.reduce((sum, f) => sum + f.size, 0);
  setProgress(`Uploading ${files.length} files (${megabytes(total)} MB)…`, 0);
  try {
    const result = await triage(files, (phase, fraction, event) => {
      if (phase === "upload") {
        setProgress(`Uploading: ${megabytes(event.loaded)} of ${megabytes(event.total)} MB`, fraction);
      } else if (!timer) {
        const started = performance.now();
        const tick = () => {
          const seconds = ((performance.now() - started) / 1000).toFixed(1);
          setProgress(`Uploaded. The gateway is reading the study and running the model… ${seconds} s`, null);
        };
        tick();
        timer = setInterval(tick, 200);
      }
    });
    showResult(result);
  } catch (problem) {
    showProblem(asProblem(problem), "The study was not triaged");
  } finally {
    clearInterval(timer);
    busy = false;
    page.progress.hidden = true;
    page.dropzone.removeAttribute("aria-busy");
  }
}

function markDrop() {
  performance.clearMarks();
  performance.mark("headct:drop");
}

page.dropzone.addEventListener("dragover", (event) => {
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  page.dropzone.classList.add("dragging");
});
page.dropzone.addEventListener("dragleave", () => page.dropzone.classList.remove("dragging"));
page.dropzone.addEventListener("drop", async (event) => {
  event.preventDefault();
  page.dropzone.classList.remove("dragging");
  markDrop();
  await send(await filesFromDrop(event.dataTransfer));
});
// from the keyboard, the zone opens the file picker
page.dropzone.addEventListener("keydown", (event) => {
  if (event.target === page.dropzone && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    $("#pick-files").click();
  }
});
// a file dropped beside the zone would make the browser open it in place of the page
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

for (const input of [$("#pick-files"), $("#pick-folder")]) {
  input.addEventListener("change", async () => {
    markDrop();
    const files = filesFromPicker(input);
    input.value = ""; // picking the same study again fires change again
    await send(files);
  });
}

// ---- findings controls -----------------------------------------------------------------------

page.positivesOnly.addEventListener("change", renderFindingsNow);
page.criticalFirst.addEventListener("change", renderFindingsNow);

// ---- keyboard --------------------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = target.matches("input[type=text], input[type=password], textarea");
  // the range input moves itself with arrows, Page and Home/End keys
  const native = target.matches("input[type=range]") && !/^[kKoO1-9]$/.test(event.key);
  if (typing || native || event.altKey || event.ctrlKey || event.metaKey) return;
  if (!page.result.hidden && slices.handleKey(event)) event.preventDefault();
});

// ---- API key ---------------------------------------------------------------------------------

function openKeyForm() {
  page.keyForm.hidden = false;
  page.keyToggle.setAttribute("aria-expanded", "true");
  $("#api-key").value = apiKey();
  $("#api-key").focus();
}

page.keyToggle.addEventListener("click", () => {
  if (page.keyForm.hidden) openKeyForm();
  else {
    page.keyForm.hidden = true;
    page.keyToggle.setAttribute("aria-expanded", "false");
  }
});
page.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("#api-key").value.trim());
  page.keyForm.hidden = true;
  page.keyToggle.setAttribute("aria-expanded", "false");
  clearProblem();
  describeModel();
});
$("#key-forget").addEventListener("click", () => {
  setApiKey("");
  $("#api-key").value = "";
  describeModel();
});

// ---- the model, and reopening a stored result ------------------------------------------------

async function describeModel() {
  try {
    const card = await getJSON("/v1/model");
    page.modelInfo.textContent = `Model ${card.name} version ${card.version}`;
    page.modelInfo.title = card.intended_use;
    $("#intended-use").textContent = card.intended_use;
  } catch (problem) {
    page.modelInfo.textContent =
      problem.body && problem.body.code === "unauthorized"
        ? "This gateway needs an API key."
        : `Model not available: ${problem.message}`;
    if (problem.body && problem.body.code === "unauthorized") openKeyForm();
  }
}

$("#reopen-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const uid = $("#reopen-uid").value.trim();
  if (!uid || busy) return;
  clearProblem();
  hideResult();
  try {
    const stored = await getJSON(`/v1/studies/${encodeURIComponent(uid)}`);
    const result = stored.findings ? stored : stored.result;
    if (!result || !result.findings) {
      const state = stored.state ? ` (its state: ${stored.state})` : "";
      showProblem({
        body: {
          code: "no_stored_result",
          title: "No result yet",
          detail: `The gateway has study ${uid} but no triage result for it yet${state}.`,
        },
      });
      return;
    }
    showResult(result);
  } catch (problem) {
    if (problem instanceof Problem && problem.body.status === 404) {
      showProblem({
        body: {
          ...problem.body,
          title: "No stored result",
          detail: `The gateway has no stored result for study ${uid}. Results are stored when the gateway keeps a study store; otherwise drop the study to triage it.`,
        },
      });
    } else showProblem(asProblem(problem), "Could not open the study");
  }
});

describeModel();
