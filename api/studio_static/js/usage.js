// The account page's usage card: GET /v1/usage drawn as an SVG bar chart (credits per day, task or API key), with a
// CSV download of the same rows. The SVG is built node by node (textContent only), like every other view.

import { get, request } from "./api.js";
import { $ } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 180;
const AXIS = 28; // room under the bars for their labels
const TOP = 16; // room above the tallest bar for its value

const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Short labels under the bars: a day as MM-DD; a task or key name cut to what fits.
function shortLabel(row, groupBy, room) {
  const text = groupBy === "day" ? row.label.slice(5) : row.label;
  const fits = Math.max(3, Math.floor(room / 6.5));
  return text.length > fits ? `${text.slice(0, fits - 1)}…` : text;
}

export function drawUsage(container, usage) {
  const rows = usage.data;
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    class: "usage-chart",
    "aria-label": `Credits used by ${usage.group_by.replace("_", " ")}, ${usage.from} to ${usage.to}`,
  });
  const plot = HEIGHT - AXIS - TOP;
  const top = Math.max(1, ...rows.map((row) => row.credits));
  const slot = WIDTH / Math.max(1, rows.length);
  const bar = Math.min(56, Math.max(2, slot * 0.7));
  chart.append(svg("line", { x1: 0, x2: WIDTH, y1: TOP + plot, y2: TOP + plot, class: "axis" }));
  // Label every bar when they fit, else about every seventh (a week of days).
  const labelEvery = slot >= 40 ? 1 : Math.ceil(40 / slot);
  rows.forEach((row, index) => {
    const height = (row.credits / top) * plot;
    const x = index * slot + (slot - bar) / 2;
    const rect = svg("rect", { x, y: TOP + plot - height, width: bar, height, class: "bar", "data-group": row.group ?? "" });
    const seconds = row.audio_seconds ? `, ${row.audio_seconds} s of audio` : "";
    rect.append(svg("title", {}, `${row.label}: ${count(row.credits, "credit")}, ${count(row.jobs, "job")}${seconds}`));
    chart.append(rect);
    if (row.credits > 0 && slot >= 18) {
      chart.append(svg("text", { x: x + bar / 2, y: TOP + plot - height - 4, class: "value" }, String(row.credits)));
    }
    if (index % labelEvery === 0) {
      chart.append(svg("text", { x: x + bar / 2, y: HEIGHT - 10, class: "label" }, shortLabel(row, usage.group_by, slot * labelEvery)));
    }
  });
  container.replaceChildren(chart);
}

export async function loadUsage() {
  const groupBy = $("#usage-group").value;
  const usage = await get(`/v1/usage?group_by=${encodeURIComponent(groupBy)}`);
  drawUsage($("#usage-chart"), usage);
  const { credits, jobs, audio_seconds: seconds } = usage.total;
  $("#usage-total").textContent =
    `${count(credits, "credit")}, ${count(jobs, "job")}, ${seconds} s of audio from ${usage.from} to ${usage.to}.`;
}

export async function downloadUsageCsv() {
  const groupBy = $("#usage-group").value;
  const blob = await request("GET", `/v1/usage?group_by=${encodeURIComponent(groupBy)}`, { accept: "text/csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `usage-${groupBy}.csv`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 0);
}
