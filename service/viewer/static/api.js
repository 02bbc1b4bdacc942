// Talking to the gateway: the API key (entered once, kept for this tab, sent as X-API-Key),
// JSON and image requests, and problem+json answers turned into plain words.

const KEY_STORAGE = "headct.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

/** A refused request: the gateway's problem+json (RFC 9457) or what stands in for it. */
export class Problem extends Error {
  constructor(body) {
    super(body.detail || body.title);
    this.body = body;
  }
}

/** The problem a response carries; a body that is not problem+json still gets a sentence. */
export function problemFrom(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.code === "string") return new Problem(body);
  } catch (_) {
    // not JSON: a proxy's page, say
  }
  return new Problem({
    status,
    code: `http_${status}`,
    title: `The gateway answered ${status}`,
    detail: "Its answer was not the JSON the viewer expects; a proxy between may have refused the request.",
  });
}

/** Anything thrown, as a Problem: the gateway's, or the page's own failure said as one. */
export function asProblem(error) {
  if (error instanceof Problem) return error;
  return new Problem({
    status: 0,
    code: "viewer_error",
    title: "The viewer failed",
    detail: `The page could not show the answer (${error && error.message}). Reload it and try again.`,
  });
}

export function networkProblem() {
  return new Problem({
    status: 0,
    code: "network_error",
    title: "The gateway could not be reached",
    detail: "The connection failed or was cut. Check that the gateway is running, then try again.",
  });
}

async function request(path) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  } catch (_) {
    throw networkProblem();
  }
  if (!response.ok) throw problemFrom(response.status, await response.text());
  return response;
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function getBlob(path) {
  return (await request(path)).blob();
}

// What a person can do about each refusal; the gateway's own sentence (detail) says what happened.
const HINTS = {
  not_dicom: "Drop the study's folder of DICOM images, several of its files, or a zip of them.",
  empty_upload: "Nothing was sent. Drop the study's folder, its DICOM files, or a zip of them.",
  empty_study: "Drop the study's folder, its DICOM files, or a zip of them.",
  truncated_dicom: "A file of the study is cut short. Export the study again from the PACS or scanner.",
  corrupt_dicom: "A file of the study is damaged. Export the study again from the PACS or scanner.",
  unsupported_transfer_syntax:
    "The images are compressed in a way the gateway cannot decode. Export them uncompressed, or as JPEG 2000 or RLE.",
  unsafe_zip_entry: "The zip holds a path that leaves its folder. Make a plain zip of the study folder.",
  malformed_upload: "The upload was not readable as files. Try again, or zip the study first.",
  upload_timeout: "The upload was too slow for the gateway's limits. Try again on a faster connection.",
  ingest_timeout: "The study took too long to read. Send only the axial head CT series.",
  unauthorized: "This gateway needs an API key: enter it with the API key button above (once; it is kept for this tab).",
  over_capacity: "The gateway is busy with other studies. Try again in a few seconds.",
  too_many_uploads: "This computer already has several uploads in progress. Wait for them, then try again.",
  backend_unavailable: "The model is not available right now. Try again shortly.",
  backend_timeout: "The model did not answer in time. Try again shortly.",
};

export function hintFor(problem) {
  const { code, status } = problem.body;
  if (code in HINTS) return HINTS[code];
  if (status === 413) return "The study is larger than this gateway accepts. Send only the axial head CT series, or ask the administrator about the limits.";
  if (status === 422) return "The files are DICOM, but not a head CT the model can read. Each series, and why it was not used:";
  return "";
}
