// The /v1 API from the browser: bearer auth, problem+json errors, and the job event stream.
//
// The token lives in sessionStorage (see session.js): it is sent only in the Authorization header, never in a URL.
// EventSource cannot send that header, so the SSE stream is read with fetch() and parsed here; it reconnects with
// `Last-Event-ID` after a dropped connection, as EventSource would.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.code = problem.code || "http_error";
  }
}

let tokenSource = () => null;
let onUnauthorized = () => {};

export function configure({ token, unauthorized }) {
  tokenSource = token;
  onUnauthorized = unauthorized;
}

function headers(extra = {}) {
  const token = tokenSource();
  return token ? { Authorization: `Bearer ${token}`, ...extra } : { ...extra };
}

export const authHeaders = () => headers();

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      // fall through to a generic problem
    }
  }
  return { title: response.statusText || `HTTP ${response.status}`, status: response.status };
}

// `accept` asks for another representation (e.g. GET /v1/usage as text/csv), returned as a Blob instead of JSON.
export async function request(method, path, { json, form, extraHeaders, signal, accept } = {}) {
  const init = { method, headers: headers({ ...extraHeaders, ...(accept ? { Accept: accept } : {}) }), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401) onUnauthorized(problem);
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  return accept ? response.blob() : response.json();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, json, options = {}) => request("POST", path, { ...options, json });
export const del = (path) => request("DELETE", path);

// The job body as multipart (file uploads) or JSON (generate, or a finished resumable upload): the same shape for
// quotes and submits.
export function jobBody({ task, params, file, durationS, inputUpload }) {
  if (file) {
    const form = new FormData();
    form.append("task", task);
    form.append("params", JSON.stringify(params));
    form.append("file", file, file.name || "input.wav");
    return { form };
  }
  const json = { task, params };
  if (durationS !== undefined) json.duration_s = durationS;
  if (inputUpload !== undefined) json.input_upload = inputUpload;
  return { json };
}

// Follow a job's events until `done` (or `stop()`): onEvent(kind, data). Reconnects with Last-Event-ID.
export function followJob(jobId, onEvent, { retryMs = 3000 } = {}) {
  let lastId = null;
  let stopped = false;
  let controller = null;

  async function connect() {
    while (!stopped) {
      controller = new AbortController();
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      let finished = false;
      try {
        const response = await fetch(`/v1/jobs/${jobId}/events`, { headers: headers(extra), signal: controller.signal });
        if (response.status === 204) return; // already received `done`
        if (!response.ok) {
          const problem = await problemOf(response);
          if (response.status === 401) onUnauthorized(problem);
          if (response.status < 500) {
            onEvent("error", new ApiError(response.status, problem));
            return;
          }
          throw new ApiError(response.status, problem);
        }
        finished = await readStream(response.body, (kind, data, id) => {
          if (id !== null) lastId = id;
          if (kind === "retry") retryMs = Number(data) || retryMs;
          else onEvent(kind, data);
        });
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        onEvent("reconnecting", { error: String(error.message || error) });
      }
      if (finished) return;
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  }

  connect();
  return {
    stop() {
      stopped = true;
      if (controller) controller.abort();
    },
    get lastEventId() {
      return lastId;
    },
  };
}

// Parse text/event-stream; returns true once a `done` event arrived (the server then closes the stream).
async function readStream(body, emit) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let done = false;
  for (;;) {
    const { value, done: ended } = await reader.read();
    if (ended) return done;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") kind = text;
        else if (field === "data") data.push(text);
        else if (field === "id") id = text;
        else if (field === "retry") emit("retry", text, null);
      }
      if (!data.length) continue;
      let parsed = data.join("\n");
      try {
        parsed = JSON.parse(parsed);
      } catch {
        // keep the raw text
      }
      emit(kind, parsed, id);
      if (kind === "done") done = true;
    }
  }
}
