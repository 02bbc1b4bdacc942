// A study from a drop or a picker (a folder, several files, or a zip) sent to POST /v1/triage as
// multipart "files" parts, with the upload's progress and then the server's working time.

import { authHeaders, networkProblem, problemFrom } from "./api.js";

/** Files the operating system hides (.DS_Store, ._ resource forks) are not part of a study. */
function visible(file) {
  return !file.name.startsWith(".");
}

function fileOf(entry) {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

function readBatch(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry, out) {
  if (entry.isFile) {
    out.push(await fileOf(entry));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    // readEntries answers in batches (about 100 in Chromium) until an empty one
    for (let batch = await readBatch(reader); batch.length; batch = await readBatch(reader)) {
      for (const child of batch) await walk(child, out);
    }
  }
}

/** Every file a drop carries, folders walked. The entries must be taken before the first await:
 * the browser empties the DataTransfer when the drop handler returns. */
export async function filesFromDrop(dataTransfer) {
  const entries = [...(dataTransfer.items || [])]
    .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  const direct = [...dataTransfer.files];
  if (!entries.length) return direct.filter(visible);
  const files = [];
  for (const entry of entries) await walk(entry, files);
  return files.filter(visible);
}

export function filesFromPicker(input) {
  return [...input.files].filter(visible);
}

/**
 * POST the files; resolves with the TriageResult, rejects with a Problem.
 * onProgress(phase, fraction): phase "upload" with the fraction sent, then "server" once the
 * whole body has gone (the gateway reads the study and runs the model).
 */
export function triage(files, onProgress) {
  const form = new FormData();
  // the file's own name only: a folder's name may be a patient's
  for (const file of files) form.append("files", file, file.name);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/triage");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress("upload", event.loaded / event.total, event);
    };
    xhr.upload.onload = () => onProgress("server", 1);
    xhr.onload = () => {
      if (xhr.status === 200) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch (_) {
          reject(problemFrom(xhr.status, ""));
        }
      } else {
        reject(problemFrom(xhr.status, xhr.responseText));
      }
    };
    xhr.onerror = () => reject(networkProblem());
    xhr.send(form);
  });
}
