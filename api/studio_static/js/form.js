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

export function buildParamsForm(container, schema, idPrefix, models = []) {
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
        const text = name === "model" ? describeModel(option, models) : String(option);
        input.append(el("option", { value: String(option) }, text));
      }
      input.value = s.default ?? "";
    } else if (s.type === "boolean") {
      input = el("input", { id, name, type: "checkbox" });
      input.checked = Boolean(s.default);
    } else if (s.type === "number" || s.type === "integer") {
      input = el("input", { id, name, type: "number", inputmode: "decimal" });
      input.step = s.type === "integer" ? "1" : "any";
      if (s.minimum !== undefined) input.min = String(s.minimum);
      if (s.maximum !== undefined) input.max = String(s.maximum);
      input.value = s.default ?? "";
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
    input.setAttribute("aria-describedby", `${hintId} ${errorId}`);
    const field = el(
      "div",
      { class: s.type === "boolean" ? "field check" : "field" },
      el("label", { for: id }, label(name, s) + (required.has(name) ? " *" : "")),
      input,
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
  if (s.type === "array") {
    return { value: text.split(",").map((part) => part.trim()).filter(Boolean) };
  }
  if (s.minLength !== undefined && text.length < s.minLength) return { message: `At least ${s.minLength} characters.` };
  if (s.maxLength !== undefined && text.length > s.maxLength) return { message: `At most ${s.maxLength} characters.` };
  // The API refuses control characters in text params; say so before sending.
  if (/[\u0000-\u0008\u000b-\u001f\u007f]/.test(text)) return { message: "Remove control characters." };
  return { value: text };
}
