// Sessions: the list page and the timeline (/sessions/<id>). Tracks are job outputs laid out as aligned waveforms
// (WaveSurfer draws each from peaks we compute); clips drag to move, their edges trim, each row has gain, pan, mute,
// solo, send-to-task and remove. Everything is saved through /v1/sessions.
//
// Playback is one AudioContext: every audible track is an AudioBufferSourceNode started with
// start(when, offset, duration) from the same context time, so the tracks are sample-aligned (not several media
// elements racing). What was scheduled is published as window.__studioSchedule for the browser tests.
// The pan is a StereoPannerNode (equal-power), the same law the server's mixdown applies (inference/mixdown.py).

import WaveSurfer from "../vendor/wavesurfer.esm.js";
import { ApiError, followJob, get, jobBody, post, request } from "./api.js";
import { $, el, formatSeconds } from "./dom.js";

// Tasks a track can be sent to, with the params they need beyond their defaults.
const SEND_TASKS = { tune: {}, master: {}, fx: { chain: [{ effect: "reverb" }] }, enhance: {}, separate: {}, midi: {} };
const MIN_CLIP_MS = 50;
const NUDGE_MS = 100; // arrow keys on a clip or a trim handle; Shift: 1 s
const SEEK_S = 1;

let state = null; // {session, tracks: Map(id -> entry), ctx, playing, zoom, playhead, ...} of the open timeline

const dbToGain = (db) => 10 ** (db / 20);
const endMs = (t) => (t.trim_out_ms === null ? t.duration_ms : Math.min(t.trim_out_ms, t.duration_ms));
const lengthMs = (t) => endMs(t) - t.trim_in_ms;

export function closeTimeline() {
  if (!state) return;
  stop();
  for (const entry of state.tracks.values()) entry.ws?.destroy();
  if (state.ctx) state.ctx.close();
  document.removeEventListener("keydown", state.keys);
  state = null;
}

// ---- the sessions list ----

export async function showSessions(container, { navigate, describe }) {
  closeTimeline();
  container.replaceChildren(el("p", { class: "hint" }, "Loading sessions…"));
  const { sessions } = await get("/v1/sessions");
  const name = el("input", { id: "session-name", name: "session-name", required: true, maxlength: 100, placeholder: "e.g. Demo song" });
  const error = el("p", { class: "error-text", role: "alert" });
  const form = el("form", { class: "row card", id: "session-form" },
    el("label", { for: "session-name" }, "New session"), name, el("button", { type: "submit" }, "Create session"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await post("/v1/sessions", { name: name.value });
      navigate(`/sessions/${created.id}`);
    } catch (e) {
      error.textContent = describe(e);
    }
  });
  const list = el("ul", { class: "sessions", id: "sessions-list" },
    sessions.map((s) => el("li", {}, el("a", { href: `/sessions/${s.id}`, "data-nav": true }, s.name),
      el("span", { class: "hint" }, ` ${s.track_count} track${s.track_count === 1 ? "" : "s"}`))));
  container.replaceChildren(form, error, sessions.length ? list : el("p", { class: "hint" }, "No sessions yet."));
}

// ---- the timeline ----

export async function showTimeline(container, sessionId, helpers) {
  closeTimeline();
  state = { id: sessionId, tracks: new Map(), order: [], ctx: null, playing: null, zoom: 100, playhead: 0, helpers, container };
  const session = await get(`/v1/sessions/${sessionId}`);
  state.session = session;
  container.replaceChildren(...skeleton(session));
  state.keys = onKey;
  document.addEventListener("keydown", state.keys);
  await Promise.all(session.tracks.map((track) => addTrackRow(track)));
  layout();
  $("#timeline").dataset.loaded = "true"; // every track's audio is decoded (tests wait for this)
  loadJobChoices();
}

function skeleton(session) {
  const title = el("input", { id: "session-title", value: session.name, maxlength: 100, "aria-label": "Session name" });
  title.addEventListener("change", () => request("PATCH", `/v1/sessions/${state.id}`, { json: { name: title.value } }).catch(report));
  const transport = el("div", { class: "row transport", role: "toolbar", "aria-label": "Transport" },
    el("button", { type: "button", id: "play", "aria-pressed": "false", onclick: toggle }, "Play"),
    el("button", { type: "button", class: "secondary", onclick: () => seek(0) }, "To start"),
    el("output", { id: "playhead-time", "aria-live": "off" }, formatSeconds(0)),
    el("button", { type: "button", class: "secondary", id: "zoom-out", "aria-label": "Zoom out", onclick: () => zoom(0.5) }, "−"),
    el("button", { type: "button", class: "secondary", id: "zoom-in", "aria-label": "Zoom in", onclick: () => zoom(2) }, "+"),
    el("button", { type: "button", id: "mixdown", onclick: mixdown }, "Mix down"),
    el("span", { id: "mixdown-result", class: "row" }));
  const ruler = el("div", { class: "ruler", id: "ruler", "aria-hidden": "true" });
  ruler.addEventListener("pointerdown", (event) => seek(Math.max(0, (event.offsetX) / state.zoom)));
  const lanes = el("div", { class: "lanes", id: "lanes" }, ruler, el("div", { class: "playhead", id: "playhead", "aria-hidden": "true" }));
  const scroller = el("div", { class: "timeline-scroll" }, lanes);
  const add = el("form", { class: "row card", id: "add-track" },
    el("label", { for: "add-job" }, "Add a finished job's audio"), el("select", { id: "add-job" }),
    el("button", { type: "submit", class: "secondary" }, "Add tracks"),
    el("a", { href: `/?session=${session.id}`, "data-nav": true, class: "button secondary" }, "Run a new job into this session"));
  add.addEventListener("submit", async (event) => {
    event.preventDefault();
    const jobId = $("#add-job").value;
    if (!jobId) return;
    await addOutputs(jobId, {});
  });
  return [
    el("div", { class: "row" }, el("label", { for: "session-title" }, "Session"), title),
    el("p", { class: "hint" }, "Space plays or stops, ← → seek, Home goes to the start. On a clip: ← → move it (Shift: 1 s); on a trim handle: ← → trim."),
    transport,
    el("div", { class: "timeline", id: "timeline" }, el("div", { class: "track-heads", id: "track-heads" }), scroller),
    el("p", { id: "timeline-status", class: "hint", role: "status", "aria-live": "polite" }),
    el("p", { id: "timeline-error", class: "error-text", role: "alert" }),
    add,
  ];
}

function report(error) {
  $("#timeline-error").textContent = state ? state.helpers.describe(error) : String(error);
}

function status(text) {
  if (state) $("#timeline-status").textContent = text;
}

function audioContext() {
  if (!state.ctx) state.ctx = new AudioContext();
  return state.ctx;
}

async function loadJobChoices() {
  try {
    const { data } = await get("/v1/jobs?status=succeeded&limit=50");
    const select = $("#add-job");
    select.replaceChildren(el("option", { value: "" }, "Choose a job"),
      data.filter((job) => job.task !== "midi" && job.task !== "transcribe")
        .map((job) => el("option", { value: job.id }, `${job.task} · ${new Date(job.created_at).toLocaleString()} · ${job.outputs.map((o) => o.name).join(", ")}`)));
  } catch (error) {
    report(error);
  }
}

async function addOutputs(jobId, extra) {
  try {
    const { tracks } = await post(`/v1/sessions/${state.id}/tracks`, { job_id: jobId, ...extra });
    for (const track of tracks) await addTrackRow(track);
    layout();
    status(`Added ${tracks.map((t) => t.name).join(", ")}.`);
    return tracks;
  } catch (error) {
    report(error);
    return [];
  }
}

function peaksOf(buffer, points) {
  const data = buffer.getChannelData(0);
  const step = Math.max(1, Math.floor(data.length / points));
  const peaks = new Float32Array(Math.ceil(data.length / step));
  for (let i = 0; i < peaks.length; i++) {
    let max = 0;
    for (let j = i * step, end = Math.min(data.length, j + step); j < end; j++) max = Math.max(max, Math.abs(data[j]));
    peaks[i] = max;
  }
  return peaks;
}

async function addTrackRow(track) {
  const entry = { track, buffer: null, blob: null, ws: null, gain: null, pan: null };
  state.tracks.set(track.id, entry);
  state.order.push(track.id);
  const label = track.name;
  const mute = el("button", { type: "button", class: "toggle", "aria-pressed": String(track.mute), "aria-label": `Mute ${label}` }, "M");
  const solo = el("button", { type: "button", class: "toggle", "aria-pressed": String(track.solo), "aria-label": `Solo ${label}` }, "S");
  const gain = el("input", { type: "range", min: -60, max: 12, step: 0.5, value: track.gain_db, "aria-label": `Gain of ${label} (dB)` });
  const pan = el("input", { type: "range", min: -1, max: 1, step: 0.05, value: track.pan, "aria-label": `Pan of ${label}` });
  const sendTask = el("select", { "aria-label": `Task to send ${label} to` }, Object.keys(SEND_TASKS).map((t) => el("option", { value: t }, t)));
  const send = el("button", { type: "button", class: "secondary", "aria-label": `Send ${label} to the chosen task` }, "Send");
  const remove = el("button", { type: "button", class: "secondary", "aria-label": `Remove ${label}` }, "✕");
  mute.addEventListener("click", () => save(entry, { mute: !entry.track.mute }));
  solo.addEventListener("click", () => save(entry, { solo: !entry.track.solo }));
  gain.addEventListener("input", () => { entry.track.gain_db = Number(gain.value); applyMix(); });
  gain.addEventListener("change", () => save(entry, { gain_db: Number(gain.value) }));
  pan.addEventListener("input", () => { entry.track.pan = Number(pan.value); applyMix(); });
  pan.addEventListener("change", () => save(entry, { pan: Number(pan.value) }));
  send.addEventListener("click", () => sendToTask(entry, sendTask.value));
  remove.addEventListener("click", () => removeTrack(entry));
  const head = el("div", { class: "track-head", "data-track": track.id },
    el("strong", { class: "track-name" }, label, track.parent_track_id ? el("span", { class: "hint" }, " (result)") : null,
      track.status === "expired" ? el("span", { class: "badge" }, " expired") : null),
    el("div", { class: "row" }, mute, solo, el("label", {}, "Gain", gain), el("label", {}, "Pan", pan)),
    el("div", { class: "row" }, sendTask, send, remove));
  const wave = el("div", { class: "clip-wave" });
  const trimIn = el("div", { class: "trim trim-in", role: "slider", tabindex: 0, "aria-label": `Trim start of ${label}`, "aria-valuemin": 0 });
  const trimOut = el("div", { class: "trim trim-out", role: "slider", tabindex: 0, "aria-label": `Trim end of ${label}`, "aria-valuemin": 0 });
  // The trim handles sit beside the clip, not inside it: one focusable control may not hold others.
  const clip = el("div", { class: "clip", role: "slider", tabindex: 0, "aria-label": `Position of ${label}`, "aria-valuemin": 0, "data-clip": track.id }, wave);
  const lane = el("div", { class: "lane", "data-lane": track.id }, clip, trimIn, trimOut);
  Object.assign(entry, { head, lane, clip, wave, trimIn, trimOut, mute, solo, gainInput: gain, panInput: pan });
  insertRow(entry);
  wireDrag(entry);
  if (track.status !== "ready") {
    clip.classList.add("expired");
    clip.append(el("span", { class: "hint" }, "expired: past retention"));
    return;
  }
  try {
    const response = await fetch(track.url);
    if (!response.ok) throw new Error(`download failed (HTTP ${response.status})`);
    entry.blob = await response.blob();
    entry.buffer = await audioContext().decodeAudioData(await entry.blob.arrayBuffer());
    entry.ws = WaveSurfer.create({ container: wave, height: 48, waveColor: "#8aa4c8", interact: false, cursorWidth: 0,
      peaks: [peaksOf(entry.buffer, 4000)], duration: entry.buffer.duration });
  } catch (error) {
    report(error);
  }
}

// A result sits right under the track it was made from; other tracks keep their order.
function insertRow(entry) {
  const heads = $("#track-heads");
  const lanes = $("#lanes");
  const parent = entry.track.parent_track_id && state.tracks.get(entry.track.parent_track_id);
  if (parent && parent.head.isConnected) {
    let after = parent;
    for (const id of state.order) {
      const other = state.tracks.get(id);
      if (other !== entry && other.track.parent_track_id === parent.track.id && other.head.isConnected) after = other;
    }
    after.head.after(entry.head);
    after.lane.after(entry.lane);
  } else {
    heads.append(entry.head);
    lanes.append(entry.lane);
  }
}

function sessionEndMs() {
  let end = 10_000;
  for (const { track } of state.tracks.values()) end = Math.max(end, track.offset_ms + lengthMs(track));
  return end;
}

function layout() {
  if (!state) return;
  const px = state.zoom / 1000; // pixels per ms
  const width = Math.ceil((sessionEndMs() + 5000) * px);
  $("#lanes").style.width = `${width}px`;
  const ruler = $("#ruler");
  ruler.replaceChildren();
  for (let s = 0; s * 1000 < sessionEndMs() + 5000; s += state.zoom >= 50 ? 1 : 5) {
    ruler.append(el("span", { class: "tick", style: `left:${s * state.zoom}px` }, formatSeconds(s)));
  }
  for (const entry of state.tracks.values()) {
    const { track } = entry;
    entry.clip.style.left = `${track.offset_ms * px}px`;
    entry.clip.style.width = `${Math.max(4, lengthMs(track) * px)}px`;
    entry.trimIn.style.left = `${track.offset_ms * px}px`;
    entry.trimOut.style.left = `${(track.offset_ms + lengthMs(track)) * px - 10}px`;
    entry.wave.style.width = `${track.duration_ms * px}px`;
    entry.wave.style.marginLeft = `${-track.trim_in_ms * px}px`;
    entry.clip.setAttribute("aria-valuenow", track.offset_ms);
    entry.clip.setAttribute("aria-valuetext", `starts at ${formatSeconds(track.offset_ms / 1000)}`);
    entry.trimIn.setAttribute("aria-valuenow", track.trim_in_ms);
    entry.trimIn.setAttribute("aria-valuetext", `${formatSeconds(track.trim_in_ms / 1000)} trimmed`);
    entry.trimIn.setAttribute("aria-valuemax", track.duration_ms);
    entry.trimOut.setAttribute("aria-valuenow", endMs(track));
    entry.trimOut.setAttribute("aria-valuetext", `ends at ${formatSeconds(endMs(track) / 1000)} of the file`);
    entry.trimOut.setAttribute("aria-valuemax", track.duration_ms);
    entry.mute.setAttribute("aria-pressed", String(track.mute));
    entry.solo.setAttribute("aria-pressed", String(track.solo));
    entry.clip.classList.toggle("silent", !audible(track));
  }
  drawPlayhead();
}

function zoom(factor) {
  state.zoom = Math.min(800, Math.max(10, state.zoom * factor));
  layout();
  status(`Zoom: ${state.zoom} pixels per second.`);
}

// Edits apply at once on screen; their PATCHes go one after another per track (so the server sees them in order),
// and only the last one's answer is taken back (an earlier answer would undo the edits made since).
function save(entry, changes) {
  Object.assign(entry.track, changes);
  layout();
  applyMix();
  const seq = (entry.saves = (entry.saves || 0) + 1);
  const sessionId = state.id;
  const timeline = $("#timeline");
  timeline.dataset.pending = String(Number(timeline.dataset.pending || 0) + 1); // unsaved edits (tests wait on 0)
  entry.saving = (entry.saving || Promise.resolve()).then(async () => {
    try {
      const saved = await request("PATCH", `/v1/sessions/${sessionId}/tracks/${entry.track.id}`, { json: changes });
      if (seq === entry.saves && state && state.id === sessionId) {
        Object.assign(entry.track, { ...saved, url: entry.track.url });
        layout();
      }
    } catch (error) {
      report(error);
    } finally {
      timeline.dataset.pending = String(Number(timeline.dataset.pending) - 1);
    }
  });
  return entry.saving;
}

// ---- editing by pointer and keyboard ----

function wireDrag(entry) {
  const drag = (target, apply) => {
    target.addEventListener("pointerdown", (event) => {
      event.stopPropagation();
      event.preventDefault();
      target.setPointerCapture(event.pointerId);
      const startX = event.clientX;
      const before = { ...entry.track };
      const move = (e) => {
        Object.assign(entry.track, apply(before, Math.round((e.clientX - startX) / (state.zoom / 1000))));
        layout();
      };
      const up = () => {
        target.removeEventListener("pointermove", move);
        target.removeEventListener("pointerup", up);
        const { offset_ms, trim_in_ms, trim_out_ms } = entry.track;
        save(entry, { offset_ms, trim_in_ms, trim_out_ms });
      };
      target.addEventListener("pointermove", move);
      target.addEventListener("pointerup", up);
    });
  };
  const moveBy = (t, delta) => ({ offset_ms: Math.max(0, t.offset_ms + delta) });
  // Trimming the start keeps the audio where it is on the timeline: the clip's start moves with the trim.
  const trimInBy = (t, delta) => {
    const limit = endMs(t) - MIN_CLIP_MS;
    const d = Math.max(-t.trim_in_ms, -t.offset_ms, Math.min(delta, limit - t.trim_in_ms));
    return { trim_in_ms: t.trim_in_ms + d, offset_ms: t.offset_ms + d };
  };
  const trimOutBy = (t, delta) => {
    const end = Math.min(t.duration_ms, Math.max(t.trim_in_ms + MIN_CLIP_MS, endMs(t) + delta));
    return { trim_out_ms: end >= t.duration_ms ? null : end };
  };
  drag(entry.clip, moveBy);
  drag(entry.trimIn, trimInBy);
  drag(entry.trimOut, trimOutBy);
  for (const [target, apply] of [[entry.clip, moveBy], [entry.trimIn, trimInBy], [entry.trimOut, trimOutBy]]) {
    target.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
      event.preventDefault();
      event.stopPropagation();
      const step = (event.shiftKey ? 10 : 1) * NUDGE_MS * (event.key === "ArrowLeft" ? -1 : 1);
      save(entry, apply({ ...entry.track }, step));
    });
  }
}

function onKey(event) {
  if (!state || !$("#timeline")) return;
  const tag = event.target.tagName;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) || event.target.isContentEditable) return;
  if (event.key === " " && tag !== "BUTTON" && tag !== "A") {
    event.preventDefault();
    toggle();
  } else if (event.key === "Home") {
    event.preventDefault();
    seek(0);
  } else if ((event.key === "ArrowLeft" || event.key === "ArrowRight") && !event.target.closest(".clip")) {
    event.preventDefault();
    seek(Math.max(0, currentTime() + (event.key === "ArrowLeft" ? -SEEK_S : SEEK_S)));
  } else if (event.key === "+" || event.key === "=") zoom(2);
  else if (event.key === "-") zoom(0.5);
}

// ---- playback: one AudioContext, every source started from one context time ----

function audible(track) {
  const soloed = [...state.tracks.values()].some((e) => e.track.solo);
  return !track.mute && (track.solo || !soloed);
}

function applyMix() {
  if (!state) return;
  for (const entry of state.tracks.values()) {
    if (entry.gain) entry.gain.gain.value = audible(entry.track) ? dbToGain(entry.track.gain_db) : 0;
    if (entry.pan) entry.pan.pan.value = entry.track.pan;
  }
  layout();
}

function currentTime() {
  if (!state.playing) return state.playhead;
  return state.playing.from + (state.ctx.currentTime - state.playing.when);
}

function toggle() {
  if (state.playing) stop();
  else play();
}

async function play() {
  const ctx = audioContext();
  if (ctx.state !== "running") await ctx.resume();
  const from = state.playhead;
  const when = ctx.currentTime + 0.1; // a little ahead, so every start below is in the future
  const sources = [];
  const schedule = [];
  for (const entry of state.tracks.values()) {
    const { track, buffer } = entry;
    if (!buffer) continue;
    const start = track.offset_ms / 1000;
    const length = lengthMs(track) / 1000;
    if (from >= start + length) continue;
    const into = Math.max(0, from - start);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    entry.gain = ctx.createGain();
    entry.pan = ctx.createStereoPanner();
    source.connect(entry.gain).connect(entry.pan).connect(ctx.destination);
    const at = when + Math.max(0, start - from);
    const offset = track.trim_in_ms / 1000 + into;
    source.start(at, offset, length - into);
    sources.push(source);
    schedule.push({ track: track.id, name: track.name, when: at, offset, duration: length - into });
  }
  state.playing = { when, from, sources };
  applyMix();
  window.__studioSchedule = { contextTime: when, from, sampleRate: ctx.sampleRate, sources: schedule };
  $("#timeline").dataset.scheduled = String(schedule.length);
  $("#play").textContent = "Stop";
  $("#play").setAttribute("aria-pressed", "true");
  const end = Math.max(0, ...schedule.map((s) => s.when + s.duration));
  const tick = () => {
    if (!state || !state.playing || state.playing.sources !== sources) return;
    if (ctx.currentTime >= end) {
      stop();
      return;
    }
    drawPlayhead();
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

function stop() {
  if (!state || !state.playing) return;
  state.playhead = currentTime();
  for (const source of state.playing.sources) {
    try {
      source.stop();
    } catch {
      // never started
    }
  }
  state.playing = null;
  for (const entry of state.tracks.values()) entry.gain = entry.pan = null;
  $("#play").textContent = "Play";
  $("#play").setAttribute("aria-pressed", "false");
  drawPlayhead();
}

function seek(seconds) {
  const wasPlaying = Boolean(state.playing);
  stop();
  state.playhead = seconds;
  drawPlayhead();
  if (wasPlaying) play();
}

function drawPlayhead() {
  const time = currentTime();
  $("#playhead").style.left = `${time * state.zoom}px`;
  $("#playhead-time").textContent = formatSeconds(time);
}

// ---- jobs from the timeline: send a track to a task, mix down ----

// Follow a job to its end; resolves with the final job resource.
function finished(jobId) {
  return new Promise((resolve, reject) => {
    const follower = followJob(jobId, (kind, data) => {
      if (kind === "done") {
        follower.stop();
        resolve(data);
      } else if (kind === "error") {
        follower.stop();
        reject(data);
      }
    });
  });
}

async function sendToTask(entry, task) {
  const { track } = entry;
  if (!entry.blob) {
    report(new Error(`${track.name} is not loaded (expired or still downloading).`));
    return;
  }
  // The browser submits the track's audio itself (multipart): an input_url pointing back at this server would be
  // refused by the API's fetch guard in local mode, and signed URLs expire.
  const file = new File([entry.blob], track.output, { type: entry.blob.type || "audio/wav" });
  const sessionId = state.id;
  try {
    status(`Sending ${track.name} to ${task}…`);
    const job = await request("POST", "/v1/jobs", { ...jobBody({ task, params: SEND_TASKS[task], file }), extraHeaders: { "Idempotency-Key": crypto.randomUUID() } });
    const done = await finished(job.id);
    if (!state || state.id !== sessionId) return;
    if (done.status !== "succeeded") throw new Error(`${task} ${done.status}: ${done.error ? done.error.message : ""}`);
    state.helpers.refreshBalance();
    if (task === "midi") {
      status(`${track.name} → midi finished: its notes are in the job (not audio, so no track).`);
      return;
    }
    const added = await addOutputs(done.id, { parent_track_id: track.id, offset_ms: track.offset_ms, name: `${track.name} → ${task}` });
    status(`${task} of ${track.name} added: ${added.map((t) => t.name).join(", ")}.`);
  } catch (error) {
    report(error);
  }
}

async function removeTrack(entry) {
  try {
    await request("DELETE", `/v1/sessions/${state.id}/tracks/${entry.track.id}`);
    entry.ws?.destroy();
    entry.head.remove();
    entry.lane.remove();
    state.tracks.delete(entry.track.id);
    state.order = state.order.filter((id) => id !== entry.track.id);
    layout();
    status(`Removed ${entry.track.name}.`);
  } catch (error) {
    report(error);
  }
}

async function mixdown() {
  const box = $("#mixdown-result");
  const sessionId = state.id;
  box.replaceChildren(el("span", { class: "hint" }, "Mixing down…"));
  try {
    const job = await request("POST", `/v1/sessions/${sessionId}/mixdown`, { json: {}, extraHeaders: { "Idempotency-Key": crypto.randomUUID() } });
    const done = await finished(job.id);
    if (!state || state.id !== sessionId) return;
    if (done.status !== "succeeded") throw new Error(`mixdown ${done.status}: ${done.error ? done.error.message : ""}`);
    const out = done.outputs[0];
    const add = el("button", { type: "button", class: "secondary", id: "mixdown-add" }, "Add the mix as a track");
    add.addEventListener("click", () => addOutputs(done.id, { name: "Mixdown" }));
    box.replaceChildren(el("a", { href: out.url, download: out.name, class: "button", id: "mixdown-download", "data-job": done.id }, `Download ${out.name}`), add);
    state.helpers.refreshBalance();
  } catch (error) {
    box.replaceChildren();
    if (error instanceof ApiError && error.status === 402) state.helpers.paywall(error.problem);
    else report(error);
  }
}
