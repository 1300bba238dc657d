// The studio: routing between the views, sign-in, the submit form with its live quote, the job panel, the jobs
// history, the account page and the paywall. Everything goes through the public /v1 API (api.js).

import { ApiError, configure, del, followJob, get, jobBody, post, request } from "./api.js";
import { uploadResumable } from "./upload.js";
import { $, el, formatDate, formatMoney } from "./dom.js";
import { buildParamsForm } from "./form.js";
import { startRecording } from "./record.js";
import { clearResults, player, renderResults, showPartial } from "./results.js";
import * as session from "./session.js";
import { closeTimeline, showSessions, showTimeline } from "./timeline.js";
import { downloadUsageCsv, loadUsage } from "./usage.js";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const FINAL = new Set(["succeeded", "failed", "canceled"]);
const VIEWS = { "/": "studio", "/sessions": "sessions", "/jobs": "jobs", "/account": "account", "/billing/success": "billing", "/billing/canceled": "billing" };
const PROVIDERS = ["google", "github"]; // offered in Supabase mode; a provider the project has not enabled answers an error

let config = null;
let allTasks = []; // GET /v1/tasks: every task (the jobs filter)
let tasks = []; // the ones the task form runs
let form = null; // the params form of the chosen task
let input = null; // the File (picked, dropped or recorded) for audio tasks
let inputDuration = null;
let currentJob = null; // {id, follower, input}
let jobsCursor = null;
let intoSession = null; // /?session=<id>: a job run from here adds its audio outputs to that session when it succeeds
const jobFollowers = new Map(); // live rows on the jobs page

// ---- boot ----

// The offline banner follows the browser's connectivity; the service worker (/sw.js) serves the app shell then.
function watchConnectivity() {
  const show = () => ($("#offline").hidden = navigator.onLine);
  window.addEventListener("online", show);
  window.addEventListener("offline", show);
  show();
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(() => {});
}

async function boot() {
  configure({ token: session.token, unauthorized: () => {} });
  watchConnectivity();
  try {
    [config, allTasks] = await Promise.all([get("/v1/config"), get("/v1/tasks").then((list) => list.data)]);
    // A mixdown (input_kind tracks) is started from a session, not from the task form.
    tasks = allTasks.filter((t) => t.input_kind !== "tracks");
    await session.startSession(config, route);
  } catch (error) {
    if (!navigator.onLine || error instanceof TypeError) {
      // fetch() rejects with a TypeError when there is no network: the shell loaded from the cache, the API did not.
      $("#boot").hidden = true;
      $("#offline").hidden = false;
    } else $("#boot").textContent = `The studio could not start: ${error.message}`;
    return;
  }
  $("#boot").hidden = true;
  wireNavigation();
  wireSignIn();
  wireStudio();
  wireJobs();
  wireAccount();
  route();
}

function wireNavigation() {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
  });
  window.addEventListener("popstate", route);
  $("#sign-out").addEventListener("click", async () => {
    await session.signOut();
    route();
  });
}

function navigate(href) {
  history.pushState(null, "", href);
  route();
}

function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === location.pathname) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  const signedIn = Boolean(session.token());
  $("#nav").hidden = !signedIn;
  $("#who").hidden = !signedIn;
  if (!signedIn) {
    showView("signin");
    document.title = "Sign in · Audio Studio";
    return;
  }
  const sessionPage = location.pathname.match(/^\/sessions\/([0-9a-f-]{36})$/);
  const view = sessionPage ? "session" : VIEWS[location.pathname] || "studio";
  if (view !== "session") closeTimeline();
  showView(view);
  document.title = `${view[0].toUpperCase()}${view.slice(1)} · Audio Studio`;
  $("#main").focus({ preventScroll: true });
  refreshBalance();
  if (view === "studio") {
    const reopen = new URLSearchParams(location.search).get("job");
    if (reopen && (!currentJob || currentJob.id !== reopen)) openJob(reopen);
    const into = new URLSearchParams(location.search).get("session");
    intoSession = into && /^[0-9a-f-]{36}$/.test(into) ? into : null;
    $("#into-session").hidden = !intoSession;
    if (intoSession) $("#into-session-link").setAttribute("href", `/sessions/${intoSession}`);
  } else if (view === "sessions") showSessions($("#sessions-body"), timelineHelpers()).catch((e) => flash(describe(e)));
  else if (view === "session") showTimeline($("#session-body"), sessionPage[1], timelineHelpers()).catch((e) => flash(describe(e)));
  else if (view === "jobs") loadJobs(true);
  else if (view === "account") loadAccount();
  else if (view === "billing") billingReturn(location.pathname.endsWith("success"));
}

function timelineHelpers() {
  return { navigate, describe, refreshBalance, paywall: openPaywall };
}

function flash(text) {
  const box = $("#flash");
  box.textContent = text;
  box.hidden = !text;
}

function describe(error) {
  if (error instanceof ApiError) {
    const fields = (error.problem.errors || []).map((e) => `${(e.loc || []).join(".")}: ${e.msg}`);
    return [error.message, ...fields].join(" ");
  }
  return String(error.message || error);
}

async function refreshBalance() {
  try {
    const credits = await get("/v1/credits");
    $("#balance").textContent = plural(credits.available, "credit");
    return credits;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      await session.signOut();
      flash("Your session has ended: sign in again.");
      route();
    }
    return null;
  }
}

// ---- sign in ----

function wireSignIn() {
  $("#signin-local").hidden = !config.local_sign_in;
  $("#signin-supabase").hidden = config.mode !== "supabase";
  $("#local-sign-in").addEventListener("click", async () => {
    $("#signin-error").textContent = "";
    try {
      await session.signInLocal();
      flash("");
      route();
    } catch (error) {
      $("#signin-error").textContent = describe(error);
    }
  });
  $("#signin-key").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("#signin-error").textContent = "";
    session.useApiKey($("#api-key").value);
    $("#api-key").value = "";
    try {
      await get("/v1/credits");
      route();
    } catch (error) {
      await session.signOut();
      $("#signin-error").textContent = describe(error);
    }
  });
  if (config.mode === "supabase") {
    $("#signin-supabase").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await session.signInWithEmail($("#email").value);
        $("#signin-error").textContent = "";
        flash("Check your email for the sign-in link.");
      } catch (error) {
        $("#signin-error").textContent = describe(error);
      }
    });
    for (const provider of PROVIDERS) {
      $("#oauth-buttons").append(
        el("button", { type: "button", class: "secondary", onclick: () => session.signInWithProvider(provider).catch((e) => ($("#signin-error").textContent = describe(e))) }, `Continue with ${provider[0].toUpperCase()}${provider.slice(1)}`),
      );
    }
  }
}

// ---- studio: input, params, quote, submit ----

function taskInfo() {
  return tasks.find((t) => t.task === $("#task").value);
}

// Whether this deployment can run a model (GET /v1/tasks): a note for the pickers when it cannot.
function modelNote(model) {
  if (!model.enabled) return `not enabled here: ${model.licence}`;
  if (!model.installed) return `not installed; operator: ${model.install}`;
  return null;
}

// The `model` param's options: each value's weights, disabled with the install command when they are missing.
function modelOptionState(info, name, value) {
  if (name !== "model") return null;
  const model = info.models.find((m) => m.key === info.model_choices[value]);
  const note = model ? modelNote(model) : null;
  return note ? { disabled: true, note } : null;
}

// A task can run here when it needs no weights or one of its models is installed and enabled; otherwise the note
// names what the operator installs (the default model's command).
function taskNote(info) {
  if (!info.models.length || info.models.some((m) => !modelNote(m))) return null;
  const chosen = info.model_choices[info.params_schema.properties?.model?.default];
  const model = info.models.find((m) => m.key === chosen) || info.models[0];
  return modelNote(model);
}

function wireStudio() {
  const select = $("#task");
  for (const t of tasks) {
    const note = taskNote(t);
    const option = el("option", { value: t.task }, note ? `${t.task} (${note})` : t.task);
    option.disabled = Boolean(note);
    select.append(option);
  }
  // Open on the first task this deployment can run, never on one whose Run would be refused.
  const first = tasks.find((t) => !taskNote(t));
  if (first) select.value = first.task;
  select.addEventListener("change", chooseTask);
  const limits = tasks[0] ? tasks[0].limits : null;
  if (limits) $("#formats").textContent = `${limits.formats.join(", ")} · up to ${Math.round(limits.max_upload_bytes / 2 ** 20)} MB, ${Math.round(limits.max_duration_s / 60)} min`;

  const drop = $("#drop");
  $("#file").addEventListener("change", () => setInput($("#file").files[0] || null));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) setInput(event.dataTransfer.files[0]);
  });
  // The label opens the picker on click; Enter/Space do the same for keyboard users.
  drop.tabIndex = 0;
  drop.setAttribute("role", "button");
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("#file").click();
    }
  });

  let recording = null;
  $("#record").addEventListener("click", async () => {
    const button = $("#record");
    try {
      if (!recording) {
        recording = await startRecording();
        button.setAttribute("aria-pressed", "true");
        button.textContent = "Stop recording";
        $("#file-info").textContent = "Recording…";
      } else {
        const file = await recording.stop();
        recording = null;
        button.setAttribute("aria-pressed", "false");
        button.textContent = "Record from microphone";
        setInput(file);
      }
    } catch (error) {
      recording = null;
      button.setAttribute("aria-pressed", "false");
      $("#file-info").textContent = `Microphone unavailable: ${error.message || error}`;
    }
  });

  $("#params").addEventListener("input", scheduleQuote);
  $("#params").addEventListener("change", scheduleQuote);
  $("#job-form").addEventListener("submit", submit);
  $("#cancel").addEventListener("click", cancelJob);
  $("#paywall-close").addEventListener("click", () => $("#paywall").close());
  chooseTask();
}

let shownTask = null;
function chooseTask() {
  const info = taskInfo();
  if (!info || info.task === shownTask) return; // re-choosing the same task keeps what was typed
  shownTask = info.task;
  $("#task-description").textContent = `${info.description} · ${plural(info.price.rate, "credit")} per ${info.price.unit.replace("_", " ")} (minimum ${info.price.minimum})`;
  $("#audio-input").hidden = info.input_kind !== "audio";
  form = buildParamsForm($("#params"), info.params_schema, `param-${info.task}`, {
    optionState: (name, value) => modelOptionState(info, name, value),
    models: info.models,
  });
  $("#submit-error").textContent = "";
  showSpanPicker();
  scheduleQuote();
}

function selectTask(task) {
  $("#task").value = task;
  chooseTask();
}

// Cover or repaint an audio result: it becomes the input of the chosen task (results.js offers the buttons).
function reuseOutput(blob, name, task) {
  selectTask(task);
  setInput(new File([blob], name, { type: blob.type || "audio/wav" }));
  $("#job-form").scrollIntoView({ block: "start" });
}

// repaint: the input on a waveform; click or drag to a point, then mark it as the span's start or end.
let spanPlayer = null;
function showSpanPicker() {
  const box = $("#span-picker");
  if (spanPlayer) spanPlayer.ws.destroy();
  spanPlayer = null;
  const info = taskInfo();
  const fields = info && info.task === "repaint" && form ? Object.fromEntries(form.fields.map((f) => [f.name, f.input])) : {};
  box.replaceChildren();
  box.hidden = !(input && fields.start_s && fields.end_s);
  if (box.hidden) return;
  const p = player(`Pick the span to repaint in ${input.name}`, input, { slug: "span", owned: true });
  spanPlayer = p;
  const mark = (name) => () => {
    fields[name].value = p.audio.currentTime.toFixed(2);
    fields[name].dispatchEvent(new Event("input", { bubbles: true }));
  };
  box.append(
    p.box,
    el(
      "div",
      { class: "row" },
      el("button", { type: "button", class: "secondary", id: "span-start", onclick: mark("start_s") }, "Start here"),
      el("button", { type: "button", class: "secondary", id: "span-end", onclick: mark("end_s") }, "End here"),
    ),
  );
}

function setInput(file) {
  input = file;
  inputDuration = null;
  $("#file-info").textContent = "";
  showSpanPicker();
  if (!file) return scheduleQuote();
  $("#drop-text").textContent = file.name;
  // The browser's own reading of the duration prices the live quote without uploading; the API re-measures at submit.
  const probe = new Audio();
  const url = URL.createObjectURL(file);
  probe.preload = "metadata";
  probe.addEventListener("loadedmetadata", () => {
    inputDuration = probe.duration;
    $("#file-info").textContent = `${file.name} · ${inputDuration.toFixed(1)} s · ${(file.size / 1e6).toFixed(1)} MB`;
    URL.revokeObjectURL(url);
    scheduleQuote();
  });
  probe.addEventListener("error", () => {
    $("#file-info").textContent = `${file.name}: this browser cannot read it; the API will check it on submit.`;
    URL.revokeObjectURL(url);
    scheduleQuote();
  });
  probe.src = url;
}

let quoteTimer = null;
let quoteSeq = 0;
function scheduleQuote() {
  clearTimeout(quoteTimer);
  quoteSeq++; // an answer to an older question must not overwrite this one
  $("#quote").textContent = "Pricing…";
  $("#quote").classList.remove("insufficient");
  quoteTimer = setTimeout(quote, 250);
}

async function quote() {
  const info = taskInfo();
  const out = $("#quote");
  if (!info || !form || !session.token()) return;
  const { params, valid } = form.read({ mark: false });
  if (!valid) {
    out.textContent = "Fix the highlighted parameters to see the price.";
    return;
  }
  let body;
  if (info.input_kind === "text") body = { json: { task: info.task, params } };
  else if (Number.isFinite(inputDuration)) body = { json: { task: info.task, params, duration_s: Math.max(inputDuration, 0.01) } };
  else if (input && input.size > config.resumable_upload_threshold_bytes) {
    out.textContent = "Priced when submitted (the file is uploaded first).";
    return;
  } else if (input) body = jobBody({ task: info.task, params, file: input });
  else {
    out.textContent = "Choose an input to see the price.";
    return;
  }
  const seq = ++quoteSeq;
  try {
    const q = await request("POST", "/v1/quotes", body);
    if (seq !== quoteSeq) return;
    out.textContent = `${plural(q.credits, "credit")} · you have ${q.available}` + (q.sufficient ? "" : " (not enough: buy credits)");
    out.classList.toggle("insufficient", !q.sufficient);
  } catch (error) {
    if (seq === quoteSeq) out.textContent = `No price: ${describe(error)}`;
  }
}

// Over the deployment's threshold the file goes first as a resumable upload, with a progress bar.
async function submitBody(info, params) {
  const file = info.input_kind === "audio" ? input : null;
  if (!file || file.size <= config.resumable_upload_threshold_bytes) return jobBody({ task: info.task, params, file });
  const bar = $("#upload-progress");
  bar.hidden = false;
  bar.value = 0;
  try {
    const inputUpload = await uploadResumable(file, (sent, total) => {
      bar.value = total ? sent / total : 0;
    });
    return jobBody({ task: info.task, params, inputUpload });
  } finally {
    bar.hidden = true;
  }
}

async function submit(event) {
  event.preventDefault();
  const info = taskInfo();
  const errorBox = $("#submit-error");
  errorBox.textContent = "";
  const { params, valid } = form.read();
  if (!valid) {
    errorBox.textContent = "Some parameters are not valid.";
    form.fields.find((f) => f.input.getAttribute("aria-invalid") === "true")?.input.focus();
    return;
  }
  if (info.input_kind === "audio" && !input) {
    errorBox.textContent = "Choose, drop or record an audio file first.";
    $("#drop").focus();
    return;
  }
  const button = $("#submit");
  button.disabled = true;
  try {
    const body = await submitBody(info, params);
    // One key per click: a network retry of this request cannot create a second job or charge twice.
    const job = await request("POST", "/v1/jobs", { ...body, extraHeaders: { "Idempotency-Key": crypto.randomUUID() } });
    history.replaceState(null, "", `/?job=${job.id}${intoSession ? `&session=${intoSession}` : ""}`);
    showJob(job, info.input_kind === "audio" ? input : null);
    refreshBalance();
  } catch (error) {
    if (error instanceof ApiError && error.status === 402) openPaywall(error.problem);
    else errorBox.textContent = describe(error);
  } finally {
    button.disabled = false;
  }
}

// ---- the job panel ----

function stopCurrentJob() {
  if (currentJob && currentJob.follower) currentJob.follower.stop();
}

async function openJob(id) {
  try {
    showJob(await get(`/v1/jobs/${id}`), null);
  } catch (error) {
    $("#submit-error").textContent = describe(error);
  }
}

function showJob(job, jobInput) {
  stopCurrentJob();
  currentJob = { id: job.id, input: jobInput, follower: null };
  $("#job-panel").hidden = false;
  $("#job-title").textContent = `${job.task} job`;
  $("#job-meta").textContent = `id ${job.id} · ${plural(job.cost, "credit")}`;
  clearResults($("#results"));
  updateJob(job);
  if (FINAL.has(job.status)) {
    finishJob(job);
    return;
  }
  const mine = currentJob;
  mine.follower = followJob(job.id, (kind, data) => {
    if (currentJob !== mine) return;
    if (kind === "status" || kind === "progress") updateJob(data);
    else if (kind === "output") showPartial($("#results"), data);
    else if (kind === "done") finishJob(data);
    else if (kind === "reconnecting") $("#job-stage").textContent = "connection lost, reconnecting…";
    else if (kind === "error") $("#job-error").textContent = describe(data);
  });
  $("#job-panel").scrollIntoView({ block: "nearest" });
}

function updateJob(data) {
  $("#job-status").textContent = data.status;
  $("#job-status").dataset.status = data.status;
  $("#job-stage").textContent = data.stage || "";
  $("#job-progress").value = data.progress || 0;
  $("#cancel").hidden = FINAL.has(data.status);
  $("#job-error").textContent = "";
}

async function addToSession(job) {
  const sessionId = intoSession;
  try {
    const { tracks } = await post(`/v1/sessions/${sessionId}/tracks`, { job_id: job.id });
    $("#into-session-status").textContent = `Added to the session: ${tracks.map((t) => t.name).join(", ")}.`;
  } catch (error) {
    $("#into-session-status").textContent = `Not added to the session: ${describe(error)}`;
  }
}

function finishJob(job) {
  updateJob(job);
  if (intoSession && job.status === "succeeded" && currentJob && currentJob.id === job.id && !currentJob.addedToSession) {
    currentJob.addedToSession = true;
    addToSession(job);
  }
  $("#job-progress").value = job.status === "succeeded" ? 1 : job.progress;
  if (job.error) $("#job-error").textContent = `${job.error.message} (${job.error.code})`;
  renderResults($("#results"), job, { input: currentJob ? currentJob.input : null, reuse: reuseOutput });
  refreshBalance();
}

async function cancelJob() {
  if (!currentJob) return;
  try {
    const job = await post(`/v1/jobs/${currentJob.id}/cancel`);
    updateJob(job);
  } catch (error) {
    $("#job-error").textContent = describe(error);
  }
}

// ---- paywall ----

async function openPaywall(problem) {
  $("#paywall-text").textContent = `This job costs ${plural(problem.required, "credit")}; you have ${problem.available}.`;
  $("#paywall-error").textContent = "";
  $("#paywall").showModal();
  await renderPacks($("#paywall-packs"), $("#paywall-error"));
}

async function renderPacks(container, errorBox) {
  container.replaceChildren(el("p", { class: "hint" }, "Loading packs…"));
  try {
    const { enabled, packs } = await get("/v1/billing/packs");
    container.replaceChildren(
      ...packs.map((pack) =>
        el(
          "div",
          { class: "pack" },
          el("strong", {}, pack.name),
          el("span", {}, `${pack.credits.toLocaleString()} credits · ${formatMoney(pack.amount, pack.currency)}`),
          el("button", { type: "button", disabled: !enabled, "data-pack": pack.id, onclick: () => buy(pack.id, errorBox) }, `Buy ${pack.name.split(":")[0]}`),
        ),
      ),
    );
    if (!enabled) container.append(el("p", { class: "hint" }, "Payments are not configured on this server."));
  } catch (error) {
    errorBox.textContent = describe(error);
  }
}

async function buy(packId, errorBox) {
  errorBox.textContent = "";
  try {
    const { checkout_url: url } = await post("/v1/billing/checkout", { pack_id: packId }, { extraHeaders: { "Idempotency-Key": crypto.randomUUID() } });
    location.assign(url);
  } catch (error) {
    errorBox.textContent = describe(error);
  }
}

async function billingReturn(success) {
  $("#billing-title").textContent = success ? "Thank you" : "Checkout canceled";
  $("#billing-text").textContent = success
    ? "Your payment went through. Credits are added as soon as Stripe confirms it, usually within seconds."
    : "Nothing was charged.";
  const before = await refreshBalance();
  $("#billing-balance").textContent = before ? before.available : "–";
  if (!success) return;
  // Stripe's webhook may land a moment after the redirect: look again a few times.
  for (let attempt = 0; attempt < 5 && location.pathname === "/billing/success"; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const now = await refreshBalance();
    if (now) $("#billing-balance").textContent = now.available;
    if (now && before && now.available !== before.available) break;
  }
}

// ---- jobs history ----

function wireJobs() {
  const filter = $("#jobs-filter");
  for (const t of allTasks) filter.append(el("option", { value: t.task }, t.task));
  filter.addEventListener("change", () => loadJobs(true));
  $("#jobs-more").addEventListener("click", () => loadJobs(false));
}

async function loadJobs(reset) {
  const body = $("#jobs-table tbody");
  if (reset) {
    for (const follower of jobFollowers.values()) follower.stop();
    jobFollowers.clear();
    body.replaceChildren();
    jobsCursor = null;
  }
  const query = new URLSearchParams({ limit: "20" });
  if ($("#jobs-filter").value) query.set("task", $("#jobs-filter").value);
  if (jobsCursor) query.set("cursor", jobsCursor);
  try {
    const page = await get(`/v1/jobs?${query}`);
    for (const job of page.data) body.append(jobRow(job));
    jobsCursor = page.next_cursor;
    $("#jobs-more").hidden = !page.has_more;
    $("#jobs-empty").hidden = body.children.length > 0;
  } catch (error) {
    flash(describe(error));
  }
}

function jobRow(job) {
  const status = el("span", { class: "status", "data-status": job.status }, job.status);
  const open = el("a", { href: `/?job=${job.id}`, "data-nav": "", class: "button secondary", "aria-label": `Open ${job.task} job from ${formatDate(job.timings.created_at)}` }, "Open");
  const row = el(
    "tr",
    { "data-job": job.id },
    el("td", {}, formatDate(job.timings.created_at)),
    el("td", {}, job.task),
    el("td", {}, job.input ? job.input.filename || job.input.source : job.params.prompt || "–"),
    el("td", { "aria-live": "polite" }, status),
    el("td", {}, String(job.cost)),
    el("td", {}, open),
  );
  if (!FINAL.has(job.status)) {
    // Live status: each unfinished job on the page follows its own event stream.
    jobFollowers.set(
      job.id,
      followJob(job.id, (kind, data) => {
        if (kind === "status" || kind === "progress") {
          status.dataset.status = data.status;
          status.textContent = data.status === "running" ? `running ${Math.round(data.progress * 100)}%` : data.status;
        } else if (kind === "done") {
          status.dataset.status = data.status;
          status.textContent = data.status;
          jobFollowers.delete(job.id);
          refreshBalance();
        }
      }),
    );
  }
  return row;
}

// ---- account ----

let ledgerCursor = null;

function wireAccount() {
  $("#ledger-more").addEventListener("click", () => loadLedger(false));
  $("#usage-group").addEventListener("change", () => showUsage());
  $("#usage-csv").addEventListener("click", () => downloadUsageCsv().catch((error) => ($("#account-error").textContent = describe(error))));
  $("#key-form").addEventListener("submit", createKey);
  $("#new-key-copy").addEventListener("click", () => navigator.clipboard.writeText($("#new-key-value").textContent));
  $("#secret-show").addEventListener("click", async () => {
    try {
      $("#secret-value").textContent = (await get("/v1/webhooks/secret")).secret;
    } catch (error) {
      $("#account-error").textContent = describe(error);
    }
  });
  $("#secret-rotate").addEventListener("click", async () => {
    if (!confirm("Rotate the webhook secret? Deliveries from now on are signed with the new one.")) return;
    try {
      $("#secret-value").textContent = (await post("/v1/webhooks/secret/rotate")).secret;
    } catch (error) {
      $("#account-error").textContent = describe(error);
    }
  });
}

async function loadAccount() {
  $("#account-error").textContent = "";
  $("#new-key").hidden = true;
  $("#secret-value").textContent = "";
  const credits = await refreshBalance();
  if (credits) {
    $("#credits-available").textContent = credits.available;
    $("#credits-held").textContent = credits.held;
  }
  renderPacks($("#packs"), $("#account-error"));
  showUsage();
  loadLedger(true);
  loadKeys();
}

async function loadLedger(reset) {
  const body = $("#ledger-table tbody");
  if (reset) {
    body.replaceChildren();
    ledgerCursor = null;
  }
  const query = new URLSearchParams({ limit: "20" });
  if (ledgerCursor) query.set("cursor", ledgerCursor);
  try {
    const page = await get(`/v1/credits/ledger?${query}`);
    for (const entry of page.entries) {
      body.append(
        el(
          "tr",
          {},
          el("td", {}, formatDate(entry.created_at)),
          el("td", {}, entry.kind),
          el("td", {}, signed(entry.available_delta)),
          el("td", {}, signed(entry.held_delta)),
          el("td", { class: "mono" }, entry.reference || (entry.job_id ? `job ${entry.job_id.slice(0, 8)}` : "")),
        ),
      );
    }
    ledgerCursor = page.next_cursor;
    $("#ledger-more").hidden = !ledgerCursor;
  } catch (error) {
    $("#account-error").textContent = describe(error);
  }
}

async function showUsage() {
  try {
    await loadUsage();
  } catch (error) {
    $("#account-error").textContent = describe(error);
  }
}

const signed = (n) => (n > 0 ? `+${n}` : String(n));

async function loadKeys() {
  try {
    const { keys } = await get("/v1/api-keys");
    $("#keys").replaceChildren(
      ...keys.map((key) =>
        el(
          "li",
          { "data-key": key.id },
          el("span", {}, el("strong", {}, key.name), " ", el("code", {}, `${key.prefix}…`), el("small", { class: "hint" }, ` created ${formatDate(key.created_at)}, last used ${formatDate(key.last_used_at)}`)),
          el("button", { type: "button", class: "danger", "aria-label": `Revoke key ${key.name}`, onclick: () => revokeKey(key) }, "Revoke"),
        ),
      ),
    );
    if (!keys.length) $("#keys").append(el("li", { class: "hint" }, "No API keys."));
  } catch (error) {
    $("#account-error").textContent = describe(error);
  }
}

async function createKey(event) {
  event.preventDefault();
  try {
    const created = await post("/v1/api-keys", { name: $("#key-name").value });
    $("#key-name").value = "";
    $("#new-key-value").textContent = created.key;
    $("#new-key").hidden = false;
    loadKeys();
  } catch (error) {
    $("#account-error").textContent = describe(error);
  }
}

async function revokeKey(key) {
  if (!confirm(`Revoke the key "${key.name}"? Programs using it stop working at once.`)) return;
  try {
    await del(`/v1/api-keys/${key.id}`);
    $("#new-key").hidden = true;
    loadKeys();
  } catch (error) {
    $("#account-error").textContent = describe(error);
  }
}

boot();
