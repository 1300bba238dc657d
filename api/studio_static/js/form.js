// A params form built from a task's JSON schema (GET /v1/tasks): defaults, ranges and enums become inputs, and
// values are checked against the same schema before anything is sent.

import { el } from "./dom.js";

// `anyOf: [X, {type: null}]` is an optional X: an empty input means null.
function unwrap(schema) {
  if (Array.isArray(schema.anyOf)) {
    const real = schema.anyOf.filter((s) => s.type !== "null");
    if (real.length === 1) return { ...schema, ...real[0], anyOf: undefined, nullable: true };
  }
  return { ...schema, nullable: false };
}

function label(name, schema) {
  return schema.title || name.replace(/_/g, " ");
}

function hint(schema) {
  const parts = [];
  if (schema.description) parts.push(schema.description);
  if (schema.type === "number" || schema.type === "integer") {
    const low = schema.minimum ?? schema.exclusiveMinimum;
    if (low !== undefined || schema.maximum !== undefined) {
      const lowText = low === undefined ? "" : `${schema.exclusiveMinimum !== undefined ? ">" : "≥"} ${low}`;
      const highText = schema.maximum === undefined ? "" : `≤ ${schema.maximum}`;
      parts.push([lowText, highText].filter(Boolean).join(", "));
    }
  }
  if (schema.nullable) parts.push("optional");
  return parts.join(" · ");
}

// Section tags the song model reads in lyrics (ACE-Step 1.5), inserted on their own line by the lyrics editor.
const LYRIC_TAGS = ["[intro]", "[verse]", "[pre-chorus]", "[chorus]", "[bridge]", "[outro]"];

// A lyrics editor: a tall textarea, buttons that insert section tags at the cursor, and a live character count
// against the schema's maximum (what the API enforces).
function lyricsEditor(input, schema, id) {
  input.rows = 10;
  input.spellcheck = true;
  const count = el("small", { id: `${id}-count`, class: "hint", "aria-live": "polite" });
  const update = () => {
    const length = input.value.length;
    count.textContent = `${length} / ${schema.maxLength} characters`;
    count.classList.toggle("error-text", length > schema.maxLength);
  };
  const insert = (tag) => {
    const { selectionStart: start, selectionEnd: end, value } = input;
    const before = value.slice(0, start);
    const text = `${before && !before.endsWith("\n") ? "\n" : ""}${tag}\n`;
    input.setRangeText(text, start, end, "end");
    input.focus();
    input.dispatchEvent(new Event("input", { bubbles: true }));
  };
  input.addEventListener("input", update);
  update();
  const tags = el(
    "div",
    { class: "lyric-tags", role: "toolbar", "aria-label": "Insert a section tag" },
    LYRIC_TAGS.map((tag) => el("button", { type: "button", class: "secondary", onclick: () => insert(tag) }, tag)),
  );
  return { tags, count };
}


// What the model picker says about one model (GET /v1/tasks `models`): its stems, licence and published SDR.
export function describeModel(option, models) {
  const matches = models.filter((m) => m.key === option || m.key.endsWith(`/${option}`));
  if (matches.length !== 1) return String(option);
  const [m] = matches;
  const parts = [];
  if (m.stems && m.stems.length) parts.push(m.stems.join(", "));
  parts.push(m.commercial_use ? m.licence : `${m.licence}, non-commercial`);
  if (m.published_sdr) {
    const figures = Object.entries(m.published_sdr.sdr).map(([stem, db]) => `${stem} ${db}`).join(", ");
    parts.push(`SDR dB ${figures} (${m.published_sdr.benchmark})`);
  }
  return `${option} — ${parts.join(" · ")}`;
}

// `optionState(name, value)` may return {disabled, note} for an enum option: it is shown disabled with the note
// (e.g. a model this deployment has not installed), and never chosen by default. `models` (GET /v1/tasks) describe
// the model picker's options.
export function buildParamsForm(container, schema, idPrefix, { optionState = () => null, models = [] } = {}) {
  container.replaceChildren();
  const fields = [];
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const s = unwrap(raw);
    const id = `${idPrefix}-${name}`;
    const errorId = `${id}-error`;
    const hintId = `${id}-hint`;
    let input;
    if (Array.isArray(s.enum)) {
      input = el("select", { id, name });
      if (s.nullable) input.append(el("option", { value: "" }, "(none)"));
      for (const option of s.enum) {
        const state = optionState(name, option);
        const text = name === "model" ? describeModel(option, models) : String(option);
        const item = el("option", { value: String(option) }, state ? `${text} (${state.note})` : text);
        if (state && state.disabled) item.disabled = true;
        input.append(item);
      }
      input.value = s.default ?? "";
      if (input.selectedOptions[0] && input.selectedOptions[0].disabled) {
        const usable = [...input.options].find((item) => !item.disabled);
        input.value = usable ? usable.value : "";
      }
    } else if (s.type === "boolean") {
      input = el("input", { id, name, type: "checkbox" });
      input.checked = Boolean(s.default);
    } else if (s.type === "number" || s.type === "integer") {
      input = el("input", { id, name, type: "number", inputmode: "decimal" });
      input.step = s.type === "integer" ? "1" : "any";
      if (s.minimum !== undefined) input.min = String(s.minimum);
      if (s.maximum !== undefined) input.max = String(s.maximum);
      input.value = s.default ?? "";
    } else if (jsonArray(s)) {
      // A list of objects (fx's chain): JSON text, e.g. [{"effect": "reverb"}].
      input = el("textarea", { id, name, rows: "3", placeholder: '[{"effect": "reverb"}]', spellcheck: "false" });
      input.value = Array.isArray(s.default) ? JSON.stringify(s.default) : "";
    } else if (s.type === "array") {
      input = el("input", { id, name, type: "text", placeholder: "comma-separated" });
      input.value = Array.isArray(s.default) ? s.default.join(", ") : "";
    } else if ((s.maxLength || 0) > 100) {
      input = el("textarea", { id, name, rows: "3" });
      input.value = s.default ?? "";
    } else {
      input = el("input", { id, name, type: "text" });
      input.value = s.default ?? "";
    }
    if (required.has(name)) input.required = true;
    const lyrics = name === "lyrics" && input.tagName === "TEXTAREA" ? lyricsEditor(input, s, id) : null;
    input.setAttribute("aria-describedby", `${hintId} ${errorId}` + (lyrics ? ` ${id}-count` : ""));
    const field = el(
      "div",
      { class: s.type === "boolean" ? "field check" : "field" },
      el("label", { for: id }, label(name, s) + (required.has(name) ? " *" : "")),
      lyrics && lyrics.tags,
      input,
      lyrics && lyrics.count,
      el("small", { id: hintId, class: "hint" }, hint(s)),
      el("small", { id: errorId, class: "error-text", role: "alert" }),
    );
    container.append(field);
    fields.push({ name, schema: s, required: required.has(name), input, error: field.querySelector(".error-text") });
  }
  return {
    fields,
    // {params, valid}: marks each invalid field (aria-invalid + message) and returns the typed values.
    read({ mark = true } = {}) {
      const params = {};
      let valid = true;
      for (const field of fields) {
        const { value, message } = readField(field);
        if (mark) {
          field.input.setAttribute("aria-invalid", message ? "true" : "false");
          field.error.textContent = message || "";
        }
        if (message) valid = false;
        else if (value !== undefined) params[field.name] = value;
      }
      return { params, valid };
    },
  };
}

function readField({ schema: s, required, input }) {
  if (s.type === "boolean") return { value: input.checked };
  const text = input.value.trim();
  if (text === "") {
    if (required) return { message: "Required." };
    return { value: s.nullable ? null : undefined };
  }
  if (Array.isArray(s.enum)) {
    const match = s.enum.find((option) => String(option) === text);
    return match === undefined ? { message: `Choose one of ${s.enum.join(", ")}.` } : { value: match };
  }
  if (s.type === "number" || s.type === "integer") {
    const number = Number(text);
    if (!Number.isFinite(number)) return { message: "Enter a number." };
    if (s.type === "integer" && !Number.isInteger(number)) return { message: "Enter a whole number." };
    if (s.minimum !== undefined && number < s.minimum) return { message: `Must be at least ${s.minimum}.` };
    if (s.exclusiveMinimum !== undefined && number <= s.exclusiveMinimum)
      return { message: `Must be more than ${s.exclusiveMinimum}.` };
    if (s.maximum !== undefined && number > s.maximum) return { message: `Must be at most ${s.maximum}.` };
    return { value: number };
  }
  if (jsonArray(s)) {
    try {
      const value = JSON.parse(text);
      return Array.isArray(value) ? { value } : { message: "A JSON list, e.g. [{\"effect\": \"reverb\"}]." };
    } catch {
      return { message: "Not valid JSON: a list such as [{\"effect\": \"reverb\"}]." };
    }
  }
  if (s.type === "array") {
    return { value: text.split(",").map((part) => part.trim()).filter(Boolean) };
  }
  if (s.minLength !== undefined && text.length < s.minLength) return { message: `At least ${s.minLength} characters.` };
  if (s.maxLength !== undefined && text.length > s.maxLength) return { message: `At most ${s.maxLength} characters.` };
  // The API refuses control characters in text params; say so before sending.
  if (/[\u0000-\u0008\u000b-\u001f\u007f]/.test(text)) return { message: "Remove control characters." };
  return { value: text };
}

// Arrays of plain values are typed comma-separated; arrays of objects (or of mixed kinds) as JSON.
function jsonArray(s) {
  return s.type === "array" && !(s.items && ["string", "number", "integer"].includes(s.items.type));
}
