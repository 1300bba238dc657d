// Results by task: a WaveSurfer player per audio output with its download link, plus the task's own view:
// separate -> stem mixer (Web Audio), transcribe -> transcript with click-to-seek, midi -> piano roll,
// enhance/master/tune/fx -> A/B against the input and the report where there is one.
//
// Output URLs are the API's signed URLs (minted on each GET of the job). The input is deleted by the API when a
// job is final, so "the original" is the file this browser tab submitted; a job re-opened later has no original.

import WaveSurfer from "../vendor/wavesurfer.esm.js";
import { el, formatSeconds } from "./dom.js";

const AUDIO_EXTENSIONS = /\.(wav|flac|mp3|ogg|m4a)$/i;
const AB_TASKS = new Set(["enhance", "master", "tune", "fx"]);
const MAIN_OUTPUT = { enhance: /^enhanced\./, master: /^mastered\./, tune: /^tuned\./, fx: /^processed\./ };
const REPORTS = { master: "report.json", tune: "pitch.json" };

const isAudio = (output) => (output.content_type || "").startsWith("audio/") && AUDIO_EXTENSIONS.test(output.name);

let active = []; // players and audio contexts of the results on screen, torn down on the next render

export function clearResults(container) {
  for (const item of active) item.destroy();
  active = [];
  container.replaceChildren();
}

async function fetchBlob(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`download failed (HTTP ${response.status})`);
  return response.blob();
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`download failed (HTTP ${response.status})`);
  return response.json();
}

function downloadLink(output) {
  return el("a", { href: output.url, download: output.name, class: "button secondary" }, `Download ${output.name}`);
}

// A waveform player: our own <audio controls> element (keyboard-usable) that WaveSurfer draws and drives. Results'
// players are destroyed with the results; `owned` players (the repaint span picker) are destroyed by their caller.
export function player(title, source, { slug, owned = false }) {
  const audio = el("audio", { controls: true, preload: "metadata", "data-player": slug, "aria-label": title });
  const wave = el("div", { class: "wave", "aria-hidden": "true" });
  const box = el("figure", { class: "player", "data-output": slug }, el("figcaption", {}, title), wave, audio);
  const ws = WaveSurfer.create({
    container: wave,
    media: audio,
    height: 64,
    waveColor: "#8aa4c8",
    progressColor: "#2b5fa8",
    cursorColor: "#0d2b57",
    dragToSeek: true,
  });
  const loaded = (source instanceof Blob ? Promise.resolve(source) : fetchBlob(source)).then((blob) => {
    ws.loadBlob(blob);
    return blob;
  });
  loaded.catch((error) => box.append(el("p", { class: "error-text", role: "alert" }, String(error.message || error))));
  if (!owned) active.push({ destroy: () => ws.destroy() });
  return { box, audio, ws, loaded };
}

// A running job's partial outputs (SSE `output` events): the transcript growing segment by segment, and each output
// file as soon as it is finished. renderResults replaces them with the full view when the job is done.
export function showPartial(container, output) {
  if (output.kind === "segment") {
    let list = container.querySelector("ol.partial-segments");
    if (!list) {
      const section = el("section", { class: "transcript", "aria-label": "Transcript so far" }, el("h3", {}, "Transcript so far"));
      list = el("ol", { class: "segments partial-segments", "aria-live": "polite" });
      section.append(list);
      container.append(section);
    }
    const { start, text } = output.segment;
    list.append(el("li", { "data-seq": output.seq }, el("span", { class: "hint" }, formatSeconds(start)), " ", el("span", {}, text)));
  } else if (output.kind === "file") {
    let list = container.querySelector("ul.partial-files");
    if (!list) {
      list = el("ul", { class: "files partial-files", "aria-live": "polite" });
      container.append(el("h3", {}, "Ready so far"), list);
    }
    list.append(el("li", { "data-seq": output.seq }, downloadLink(output.file)));
  }
}

// Tasks that take any audio result as their input, offered under each audio output.
const REUSE_TASKS = [
  ["cover", "Cover this"],
  ["repaint", "Repaint this"],
];

export function renderResults(container, job, { input, reuse } = {}) {
  clearResults(container);
  if (job.status !== "succeeded") return;
  if (job.outputs_deleted) {
    container.append(el("p", {}, "The outputs of this job have expired and were deleted."));
    return;
  }
  const outputs = job.outputs.filter((o) => o.url);
  const byName = Object.fromEntries(outputs.map((o) => [o.name, o]));
  const inputUrl = input ? URL.createObjectURL(input) : null;
  if (inputUrl) active.push({ destroy: () => URL.revokeObjectURL(inputUrl) });
  const special = el("div", { class: "task-view" });
  container.append(special);

  const blobs = {};
  const players = el("div", { class: "players" });
  for (const output of outputs) {
    if (!isAudio(output)) continue;
    const slug = output.name.replace(/\.[^.]+$/, "");
    const p = player(output.name, output.url, { slug });
    p.box.append(downloadLink(output));
    if (reuse) {
      for (const [task, text] of REUSE_TASKS) {
        const use = async () => reuse(await p.loaded, output.name, task);
        p.box.append(el("button", { type: "button", class: "secondary", "data-reuse": task, onclick: use }, text));
      }
    }
    blobs[output.name] = p.loaded;
    players.append(p.box);
  }
  const files = outputs.filter((o) => !isAudio(o));
  container.append(el("h3", {}, "Outputs"), players);
  if (files.length) container.append(el("ul", { class: "files" }, files.map((o) => el("li", {}, downloadLink(o)))));

  if (job.task === "separate") stemMixer(special, outputs.filter(isAudio), blobs);
  else if (job.task === "transcribe" && byName["transcript.json"]) transcript(special, byName["transcript.json"], input);
  else if (job.task === "midi" && byName["notes.json"]) pianoRoll(special, byName["notes.json"], input);
  else if (AB_TASKS.has(job.task)) abCompare(special, job, outputs, blobs, inputUrl);
}

function noOriginal() {
  return el(
    "p",
    { class: "hint" },
    "The original is not available here: the API deletes inputs when a job finishes. Submit from this tab to compare.",
  );
}

// ---- separate: the stem mixer ----

function stemMixer(container, stems, blobs) {
  const context = new AudioContext();
  active.push({ destroy: () => context.close() });
  const master = context.createGain();
  master.connect(context.destination);
  const tracks = stems.map((output) => ({ output, gain: context.createGain(), buffer: null, mute: false, solo: false, volume: 1 }));
  let sources = [];
  let startedAt = 0; // context time at which offset 0 would have played
  let offset = 0;
  let playing = false;

  const status = el("p", { class: "hint", "aria-live": "polite" }, "Loading stems…");
  const playButton = el("button", { type: "button", disabled: true }, "Play all");
  const stopButton = el("button", { type: "button", class: "secondary" }, "Stop");
  const position = el("output", { "aria-label": "Position" }, "0:00.0");
  const rows = el("div", { class: "mixer-rows" });
  container.append(
    el("section", { class: "mixer", "aria-label": "Stem mixer" }, el("h3", {}, "Stem mixer"), el("div", { class: "row" }, playButton, stopButton, position), status, rows),
  );

  function applyGains() {
    const soloing = tracks.some((t) => t.solo);
    for (const t of tracks) {
      const audible = soloing ? t.solo : !t.mute;
      t.gain.gain.setTargetAtTime(audible ? t.volume : 0, context.currentTime, 0.01);
    }
  }

  for (const [index, t] of tracks.entries()) {
    t.gain.connect(master);
    const name = t.output.name.replace(/\.[^.]+$/, "");
    const id = `stem-${index}`;
    const mute = el("button", { type: "button", class: "toggle", "aria-pressed": "false", "aria-label": `Mute ${name}`, "data-stem-mute": name }, "Mute");
    const solo = el("button", { type: "button", class: "toggle", "aria-pressed": "false", "aria-label": `Solo ${name}`, "data-stem-solo": name }, "Solo");
    const volume = el("input", { type: "range", id, min: "0", max: "1.5", step: "0.01", value: "1" });
    mute.addEventListener("click", () => {
      t.mute = !t.mute;
      mute.setAttribute("aria-pressed", String(t.mute));
      applyGains();
    });
    solo.addEventListener("click", () => {
      t.solo = !t.solo;
      solo.setAttribute("aria-pressed", String(t.solo));
      applyGains();
    });
    volume.addEventListener("input", () => {
      t.volume = Number(volume.value);
      applyGains();
    });
    rows.append(el("div", { class: "mixer-row" }, el("label", { for: id }, `${name} volume`), volume, mute, solo));
  }

  Promise.all(
    tracks.map(async (t) => {
      const blob = await blobs[t.output.name];
      t.buffer = await context.decodeAudioData(await blob.arrayBuffer());
    }),
  ).then(
    () => {
      status.textContent = `${tracks.length} stems ready.`;
      playButton.disabled = false;
    },
    (error) => (status.textContent = `Could not load the stems: ${error.message || error}`),
  );

  const duration = () => Math.max(...tracks.map((t) => (t.buffer ? t.buffer.duration : 0)));
  const now = () => (playing ? context.currentTime - startedAt : offset);

  function stopSources() {
    for (const source of sources) source.stop();
    sources = [];
  }
  function play() {
    // Every stem starts at the same context time: sample-accurate sync.
    const at = context.currentTime + 0.05;
    sources = tracks.map((t) => {
      const source = context.createBufferSource();
      source.buffer = t.buffer;
      source.connect(t.gain);
      source.start(at, offset);
      return source;
    });
    startedAt = at - offset;
    playing = true;
    playButton.textContent = "Pause";
    tick();
  }
  function pause() {
    offset = Math.min(now(), duration());
    stopSources();
    playing = false;
    playButton.textContent = "Play all";
  }
  function tick() {
    if (!playing) return;
    const t = now();
    position.textContent = formatSeconds(t);
    if (t >= duration()) {
      pause();
      offset = 0;
      return;
    }
    requestAnimationFrame(tick);
  }
  playButton.addEventListener("click", async () => {
    await context.resume();
    if (playing) pause();
    else play();
  });
  stopButton.addEventListener("click", () => {
    if (playing) pause();
    offset = 0;
    position.textContent = formatSeconds(0);
  });
  applyGains();
}

// ---- transcribe: segments and words, click to seek the original ----

function transcript(container, output, input) {
  const section = el("section", { class: "transcript", "aria-label": "Transcript" }, el("h3", {}, "Transcript"));
  container.append(section);
  let audio = null;
  if (input) {
    const p = player("Original", input, { slug: "original" });
    audio = p.audio;
    section.append(p.box);
  } else {
    section.append(noOriginal());
  }
  const seek = (seconds) => {
    if (!audio) return;
    audio.currentTime = seconds;
    audio.play();
  };
  fetchJson(output.url).then(
    (doc) => {
      section.append(el("p", { class: "hint" }, `Language: ${doc.language}`));
      const list = el("ol", { class: "segments" });
      for (const segment of doc.segments || []) {
        const item = el("li", {});
        item.append(
          el("button", { type: "button", class: "link", "data-seek": segment.start, disabled: !audio, onclick: () => seek(segment.start) }, formatSeconds(segment.start)),
          " ",
        );
        if (segment.words && segment.words.length) {
          for (const word of segment.words) {
            item.append(el("button", { type: "button", class: "word", disabled: !audio, onclick: () => seek(word.start) }, word.word));
          }
        } else {
          item.append(el("span", {}, segment.text));
        }
        list.append(item);
      }
      section.append(list);
    },
    (error) => section.append(el("p", { class: "error-text", role: "alert" }, String(error.message || error))),
  );
}

// ---- midi: a piano roll of notes.json, with the original under a moving playhead ----

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function pianoRoll(container, output, input) {
  const section = el("section", { class: "piano-roll-box", "aria-label": "Piano roll" }, el("h3", {}, "Piano roll"));
  container.append(section);
  let audio = null;
  if (input) {
    const p = player("Original", input, { slug: "original" });
    audio = p.audio;
    section.append(p.box);
  } else {
    section.append(noOriginal());
  }
  fetchJson(output.url).then(
    (notes) => {
      const end = Math.max(1, ...notes.map((n) => n.end_s));
      const pitches = notes.length ? notes.map((n) => n.pitch) : [60];
      const low = Math.min(...pitches) - 2;
      const high = Math.max(Math.max(...pitches) + 2, low + 14); // at least an octave and a bit
      const width = 1000;
      const rowHeight = 8;
      const height = (high - low + 1) * rowHeight;
      const roll = svg("svg", { class: "piano-roll", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img", "data-note-count": notes.length });
      roll.setAttribute("aria-label", `Piano roll: ${notes.length} notes over ${end.toFixed(1)} s`);
      for (let pitch = low; pitch <= high; pitch++) {
        const black = [1, 3, 6, 8, 10].includes(pitch % 12);
        roll.append(svg("rect", { class: black ? "key black" : "key", x: 0, y: (high - pitch) * rowHeight, width, height: rowHeight }));
      }
      for (const note of notes) {
        const rect = svg("rect", {
          class: "note",
          x: (note.start_s / end) * width,
          y: (high - note.pitch) * rowHeight + 1,
          width: Math.max(2, ((note.end_s - note.start_s) / end) * width),
          height: rowHeight - 2,
          "fill-opacity": 0.35 + 0.65 * (note.velocity / 127),
        });
        const title = svg("title", {});
        title.textContent = `MIDI ${note.pitch}, ${note.start_s.toFixed(2)}–${note.end_s.toFixed(2)} s, velocity ${note.velocity}`;
        rect.append(title);
        roll.append(rect);
      }
      const playhead = svg("line", { class: "playhead", x1: 0, x2: 0, y1: 0, y2: height });
      roll.append(playhead);
      section.append(el("p", { class: "hint" }, `${notes.length} notes`), roll);
      if (audio) {
        const move = () => {
          const x = (audio.currentTime / end) * width;
          playhead.setAttribute("x1", x);
          playhead.setAttribute("x2", x);
          if (!audio.paused) requestAnimationFrame(move);
        };
        audio.addEventListener("play", move);
        audio.addEventListener("seeked", move);
      }
      section.append(synthButton(notes));
    },
    (error) => section.append(el("p", { class: "error-text", role: "alert" }, String(error.message || error))),
  );
}

// Hear the notes themselves: a plain triangle-wave synth through Web Audio.
function synthButton(notes) {
  let context = null;
  const button = el("button", { type: "button", class: "secondary" }, "Play notes (synth)");
  button.addEventListener("click", () => {
    if (context) {
      context.close();
      context = null;
      button.textContent = "Play notes (synth)";
      return;
    }
    context = new AudioContext();
    active.push({ destroy: () => context && context.close() });
    const start = context.currentTime + 0.05;
    for (const note of notes) {
      const osc = context.createOscillator();
      const gain = context.createGain();
      osc.type = "triangle";
      osc.frequency.value = 440 * 2 ** ((note.pitch - 69) / 12);
      const level = 0.15 * (note.velocity / 127);
      gain.gain.setValueAtTime(0, start + note.start_s);
      gain.gain.linearRampToValueAtTime(level, start + note.start_s + 0.01);
      gain.gain.setTargetAtTime(0, start + note.end_s, 0.03);
      osc.connect(gain).connect(context.destination);
      osc.start(start + note.start_s);
      osc.stop(start + note.end_s + 0.2);
    }
    button.textContent = "Stop synth";
  });
  return button;
}

// ---- enhance / master / tune / fx: A/B against the input, and the report ----

function abCompare(container, job, outputs, blobs, inputUrl) {
  const section = el("section", { class: "ab", "aria-label": "Compare with the original" }, el("h3", {}, "A/B"));
  container.append(section);
  const pattern = MAIN_OUTPUT[job.task];
  const main = outputs.find((o) => pattern && pattern.test(o.name) && isAudio(o));
  const reportName = REPORTS[job.task];
  const report = reportName && outputs.find((o) => o.name === reportName);
  if (report) loudnessReport(section, report);
  if (!main) return;
  if (!inputUrl) {
    section.append(noOriginal());
    return;
  }
  const original = el("audio", { preload: "auto", src: inputUrl, "data-player": "original-ab" });
  const processedAudio = () => container.parentElement.querySelector(`audio[data-player="${main.name.replace(/\.[^.]+$/, "")}"]`);
  const toggle = el("button", { type: "button", class: "toggle", "aria-pressed": "false", "data-ab": "" }, "Hearing: processed (B). Switch to original (A)");
  toggle.addEventListener("click", () => {
    const processed = processedAudio();
    const toOriginal = toggle.getAttribute("aria-pressed") === "false";
    const [from, to] = toOriginal ? [processed, original] : [original, processed];
    const wasPlaying = !from.paused;
    to.currentTime = Math.min(from.currentTime, to.duration || from.currentTime);
    from.pause();
    if (wasPlaying) to.play();
    toggle.setAttribute("aria-pressed", String(toOriginal));
    toggle.textContent = toOriginal ? "Hearing: original (A). Switch to processed (B)" : "Hearing: processed (B). Switch to original (A)";
  });
  section.append(original, el("p", { class: "hint" }, "Play the processed file below, then switch: the position is kept."), toggle);
  blobs[main.name]?.catch(() => (toggle.disabled = true));
}

function loudnessReport(section, output) {
  fetchJson(output.url).then(
    (report) => {
      const table = el("table", { class: "report" }, el("caption", {}, output.name));
      const rows = Object.entries(flatten(report)).slice(0, 40);
      for (const [key, value] of rows) {
        table.append(el("tr", {}, el("th", { scope: "row" }, key), el("td", {}, typeof value === "number" ? value.toFixed(2) : String(value))));
      }
      section.append(table);
    },
    (error) => section.append(el("p", { class: "error-text", role: "alert" }, String(error.message || error))),
  );
}

// Nested report objects as "a.b" keys; arrays (f0 curves) are summarised by their length.
function flatten(value, prefix = "", out = {}) {
  if (Array.isArray(value)) out[prefix] = `${value.length} values`;
  else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else out[prefix] = value;
  return out;
}
