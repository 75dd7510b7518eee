// Bitware Mesh dashboard: a few screens over the gateway's /api, with no framework and no build.
//
// Routing is by the URL's hash (#/requests, #/executions/ID, ...). Every view renders into <main>
// with `h()`, which only ever sets text, never HTML, so nothing from the API is interpreted as
// markup. The session lives in the HttpOnly cookie that POST /api/auth/login sets.
"use strict";

// ---------------------------------------------------------------- small helpers

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

// "EXECUTION_STATUS_RUNNING" → "running"
function words(name, prefix) {
  if (!name) return "";
  return name.replace(prefix, "").toLowerCase().replaceAll("_", " ");
}

function usd(value) {
  const n = Number(value || 0);
  return "$" + (n < 1 && n > 0 ? n.toFixed(4) : n.toFixed(2));
}

function count(value) {
  return Number(value || 0).toLocaleString("en");
}

function when(stamp) {
  if (!stamp) return "—";
  const date = new Date(stamp);
  return date.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}

function ago(stamp) {
  if (!stamp) return "never";
  const seconds = Math.max(0, (Date.now() - new Date(stamp).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

// protobuf JSON durations are "1.500s"
function seconds(duration) {
  return duration ? parseFloat(duration) : 0;
}

function statusClass(name) {
  if (/SUCCEEDED|COMPLETED|HEALTHY|ACTIVE/.test(name)) return "ok";
  if (/RUNNING|QUEUED|OFFERED|ACCEPTED|PENDING/.test(name)) return "run";
  if (/RETRY|DRAINING|DECLINED|BELOW/.test(name)) return "warn";
  if (/FAILED|CANCELLED|UNHEALTHY|SUSPENDED|TIMED_OUT|ABANDONED/.test(name)) return "bad";
  return "";
}

function badge(name, prefix) {
  return h("span", { class: `badge ${statusClass(name)}` }, words(name, prefix) || "unknown");
}

// A bar that screen readers read as a progress bar.
function progressBar(label, fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  const fill = h("div", { class: "fill" });
  fill.style.width = `${pct}%`;
  return h(
    "div",
    {
      class: "progress",
      role: "progressbar",
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(pct),
    },
    h("div", { class: "track" }, fill),
    h("span", { class: "pct" }, `${pct} %`),
  );
}

function setProgress(bar, fraction, state) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  bar.setAttribute("aria-valuenow", String(pct));
  bar.querySelector(".fill").style.width = `${pct}%`;
  bar.querySelector(".pct").textContent = `${pct} %`;
  bar.classList.toggle("done", state === "ok");
  bar.classList.toggle("failed", state === "bad");
}

function meter(label, fraction) {
  const inner = h("span");
  inner.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  return h("div", { class: "meter", role: "img", "aria-label": label, title: label }, inner);
}

// A control with its visible label; the label is a sibling, so the control's accessible name is
// the label's text alone.
function field(id, text, control) {
  return h("div", { class: "field" }, h("label", { for: id }, text), control);
}

// ---------------------------------------------------------------- errors in words

const REASONS = {
  BUDGET_EXCEEDED: "The client's monthly budget does not cover this request.",
  CLIENT_SUSPENDED: "This client is suspended, so it cannot run requests.",
  TIER_LIMIT_REQUESTS: "The client's tier allows no more requests this month.",
  RATE_LIMITED: "Too many requests at once for this client's tier; try again shortly.",
  TIER_PRIORITY: "The client's tier does not allow this urgency.",
  TEMPLATE_NOT_FOUND: "There is no template by that name.",
  TEMPLATE_DEPRECATED: "That template is deprecated; choose another.",
  STAGE_TIMEOUT: "A stage took longer than it is allowed to.",
  AT_CAPACITY: "Every worker is busy; the stage waits for a free one.",
  WORKER_ERROR: "The worker failed while generating the structure.",
  INVALID_OUTPUT: "The generated structure did not pass validation.",
  SCHEMA_VIOLATION: "The generated structure did not match its schema.",
  LOGIN_THROTTLED: "Too many sign-in attempts; wait a moment and try again.",
  BAD_CREDENTIAL: "That email and password do not match.",
  API_KEY_EXPIRED: "This API key has expired; create a new one.",
  API_KEY_SCOPE: "This API key's scopes do not allow this.",
  UNAVAILABLE: "A server of the mesh cannot be reached right now.",
  RATE_LIMITED: "Too many requests; wait a moment and try again.",
};

const CODES = {
  UNAUTHENTICATED: "You are not signed in, or your session has expired.",
  PERMISSION_DENIED: "Your account may not do this.",
  NOT_FOUND: "It does not exist, or it is not yours to see.",
  FAILED_PRECONDITION: "That cannot be done in its current state.",
  RESOURCE_EXHAUSTED: "A limit was reached.",
  UNAVAILABLE: "A server of the mesh cannot be reached right now.",
  DEADLINE_EXCEEDED: "The mesh took too long to answer.",
};

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.reason = error.reason || "";
    this.violations = error.field_violations || [];
  }

  get words() {
    const lead = REASONS[this.reason] || CODES[this.code] || "";
    const fields = this.violations.map((v) => `${v.field}: ${v.description}`).join("; ");
    return [lead, this.message, fields].filter(Boolean).join(" — ");
  }
}

function errorWords(detail) {
  if (!detail || (!detail.reason && !detail.message)) return "";
  const lead = REASONS[detail.reason] || "";
  const retry = detail.retryable ? " It will be retried." : "";
  return [lead, detail.message].filter(Boolean).join(" — ") + retry;
}

const alertBox = () => document.getElementById("alert");

function showError(error) {
  const box = alertBox();
  box.className = "alert";
  box.textContent = error instanceof ApiError ? error.words : String(error.message || error);
  box.hidden = false;
}

function showInfo(text) {
  const box = alertBox();
  box.className = "alert info";
  box.textContent = text;
  box.hidden = false;
}

function clearAlert() {
  alertBox().hidden = true;
}

// ---------------------------------------------------------------- the API

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && !path.startsWith("/api/auth/login")) {
      state.me = null;
      location.hash = "#/login";
    }
    throw error;
  }
  return data;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ---------------------------------------------------------------- state and routing

const state = { me: null, clients: null, cleanup: [] };

const isStaff = () =>
  state.me && ["ROLE_ADMIN", "ROLE_SUPPORT"].includes(state.me.role);
const isAdmin = () => state.me && state.me.role === "ROLE_ADMIN";

async function clients() {
  if (!state.clients) state.clients = (await api("GET", "/api/clients?page_size=200")).clients;
  return state.clients;
}

function clientName(id) {
  const found = (state.clients || []).find((c) => c.client_id === id);
  return found ? found.company_name : id;
}

function clientPicker(id, label, selected, required) {
  const select = h("select", { id, name: "client_id", required });
  select.append(h("option", { value: "" }, required ? "Choose a client…" : "All clients"));
  for (const c of state.clients || []) {
    select.append(
      h("option", { value: c.client_id, selected: c.client_id === selected }, `${c.company_name} (${c.client_id})`),
    );
  }
  return field(id, label, select);
}

const routes = [
  [/^#\/login$/, viewLogin],
  [/^#\/requests$/, viewRequests],
  [/^#\/executions\/([\w.-]+)$/, viewExecution],
  [/^#\/jobs\/([\w.-]+)$/, viewStructure],
  [/^#\/queue$/, viewQueue],
  [/^#\/workers$/, viewWorkers],
  [/^#\/usage$/, viewUsage],
  [/^#\/admin\/clients$/, viewClients],
  [/^#\/admin\/users$/, viewUsers],
  [/^#\/admin\/keys$/, viewKeys],
];

function updateChrome() {
  const signedIn = Boolean(state.me);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  for (const link of document.querySelectorAll("#nav [data-admin]")) link.hidden = !isAdmin();
  for (const link of document.querySelectorAll("#nav [data-staff]")) link.hidden = !isStaff();
  if (signedIn) {
    const role = words(state.me.role, "ROLE_");
    document.getElementById("who-name").textContent = `${state.me.display_name || "signed in"} · ${role}`;
  }
  const area = location.hash.split("/")[1] || "";
  for (const link of document.querySelectorAll("#nav a")) {
    const current = link.getAttribute("href").split("/")[1] === area ||
      (area === "executions" && link.getAttribute("href") === "#/requests");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  for (const stop of state.cleanup.splice(0)) stop();
  clearAlert();
  if (!state.me && location.hash !== "#/login") {
    try {
      state.me = (await api("GET", "/api/auth/me")).principal;
    } catch {
      location.hash = "#/login";
      return;
    }
  }
  if (!location.hash || location.hash === "#/") {
    location.hash = "#/overview";
    return;
  }
  updateChrome();
  const main = document.getElementById("main");
  for (const [pattern, view] of routes) {
    const match = location.hash.match(pattern);
    if (match) {
      main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
      try {
        const content = await view(...match.slice(1));
        main.replaceChildren(...[content].flat());
      } catch (error) {
        main.replaceChildren();
        showError(error);
      }
      return;
    }
  }
  main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/requests" }, "Back to requests")));
}

// ---------------------------------------------------------------- login

function viewLogin() {
  state.me = null;
  state.clients = null;
  updateChrome();
  const email = h("input", { id: "email", type: "email", autocomplete: "username", required: true });
  const password = h("input", { id: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h(
    "form",
    { class: "stack", "aria-labelledby": "login-title" },
    field("email", "Email", email),
    field("password", "Password", password),
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearAlert();
    try {
      const answer = await api("POST", "/api/auth/login", { email: email.value, password: password.value });
      state.me = answer.principal;
      location.hash = "#/overview";
    } catch (error) {
      showError(error);
      password.select();
    }
  });
  setTimeout(() => email.focus(), 0);
  return h("section", { class: "card" }, h("h1", { id: "login-title" }, "Sign in"), form);
}

// ---------------------------------------------------------------- requests

const STRUCTURE_TYPES = ["course", "quiz", "novel", "workflow", "knowledge_map", "learning_path"];
const URGENCIES = ["low", "normal", "high", "critical"];

async function viewRequests() {
  if (isStaff()) await clients();
  const page = { tokens: [""], index: 0 };
  const list = h("div", {});
  const filter = isStaff() ? clientPicker("filter-client", "Show requests of", "", false) : null;

  async function load() {
    const clientId = filter ? filter.querySelector("select").value : "";
    const answer = await api(
      "GET",
      "/api/requests" + query({ page_size: 10, page_token: page.tokens[page.index], client_id: clientId }),
    );
    list.replaceChildren(requestTable(answer.requests, load), pager(page, answer.next_page_token, load));
  }
  if (filter) filter.querySelector("select").addEventListener("change", () => {
    page.tokens = [""];
    page.index = 0;
    load().catch(showError);
  });
  await load();
  const form = await requestForm();
  const usage = h("div", {}, await usagePanel(true));
  const formPicker = form.querySelector("select[name=client_id]");
  if (formPicker) formPicker.addEventListener("change", async () => {
    try {
      usage.replaceChildren(await usagePanel(true, formPicker.value));
    } catch (error) {
      showError(error);
    }
  });
  return [
    h("h1", {}, "Requests"),
    h("div", { class: "grid" }, form, usage),
    h("section", { class: "card", "aria-labelledby": "list-title" },
      h("h2", { id: "list-title" }, "Recent requests"), filter, list),
  ];
}

function pager(page, next, load) {
  const older = h("button", { type: "button", class: "plain", disabled: !next }, "Older →");
  const newer = h("button", { type: "button", class: "plain", disabled: page.index === 0 }, "← Newer");
  older.addEventListener("click", () => {
    page.tokens[page.index + 1] = next;
    page.index += 1;
    load().catch(showError);
  });
  newer.addEventListener("click", () => {
    page.index -= 1;
    load().catch(showError);
  });
  return h("nav", { class: "pager", "aria-label": "Pages" }, newer, h("span", { class: "muted small" }, `page ${page.index + 1}`), older);
}

function requestTable(requests, reload) {
  if (!requests.length) return h("p", { class: "muted" }, "No requests yet.");
  const rows = requests.map((r) => {
    const open = r.execution_id
      ? h("a", { href: `#/executions/${r.execution_id}` }, "Progress")
      : null;
    const structure = r.job_id ? h("a", { href: `#/jobs/${r.job_id}` }, "Structure") : null;
    let run = null;
    if (r.status === "REQUEST_STATUS_PENDING") {
      run = h("button", { type: "button", class: "plain" }, "Execute");
      run.addEventListener("click", async () => {
        try {
          const answer = await api("POST", `/api/requests/${r.request_id}/execute`);
          location.hash = `#/executions/${answer.execution_id}`;
        } catch (error) {
          showError(error);
          reload().catch(showError);
        }
      });
    }
    return h(
      "tr",
      {},
      h("td", {}, when(r.create_time)),
      isStaff() ? h("td", {}, clientName(r.client_id)) : null,
      h("td", {}, r.spec.topic, h("div", { class: "muted small" }, r.spec.audience)),
      h("td", {}, words(r.spec.structure_type, "STRUCTURE_TYPE_")),
      h("td", {}, badge(r.status, "REQUEST_STATUS_"), r.error_message ? h("div", { class: "small" }, r.error_message) : null),
      h("td", { class: "num" }, usd(r.cost_usd)),
      h("td", {}, open, " ", structure, run),
    );
  });
  return h(
    "table",
    {},
    h("caption", { class: "muted small" }, "Newest first"),
    h("thead", {}, h("tr", {}, h("th", {}, "Created"), isStaff() ? h("th", {}, "Client") : null,
      h("th", {}, "Topic"), h("th", {}, "Type"), h("th", {}, "Status"), h("th", { class: "num" }, "Cost"), h("th", {}, "Open"))),
    h("tbody", {}, rows),
  );
}

async function requestForm() {
  let templates = [];
  try {
    templates = (await api("GET", "/api/master-templates?page_size=100")).master_templates || [];
  } catch {
    templates = []; // the form still works with each type's default template
  }
  const topic = h("input", { id: "topic", name: "topic", required: true, placeholder: "AI Development" });
  const type = h("select", { id: "structure-type", name: "structure_type" },
    STRUCTURE_TYPES.map((t) => h("option", { value: t }, words(t, ""))));
  const audience = h("input", { id: "audience", name: "audience", placeholder: "beginners" });
  const granularity = h("select", { id: "granularity", name: "granularity" },
    [1, 2, 3, 4, 5].map((n) => h("option", { value: n, selected: n === 3 }, `${n}${n === 1 ? " (coarse)" : n === 5 ? " (detailed)" : ""}`)));
  const urgency = h("select", { id: "urgency", name: "urgency" },
    URGENCIES.map((u) => h("option", { value: u, selected: u === "normal" }, u)));
  const template = h("select", { id: "template", name: "master_template" },
    h("option", { value: "" }, "the type's default"),
    templates.map((t) => h("option", { value: t.name }, `${t.name} (v${t.version})`)));
  const picker = isStaff() ? clientPicker("client", "Client", "", true) : null;
  const submit = h("button", { type: "submit" }, "Create and execute");
  const form = h(
    "form",
    { class: "stack", "aria-labelledby": "new-title" },
    picker,
    field("topic", "Topic", topic),
    h("div", { class: "row" },
      field("structure-type", "Structure type", type),
      field("audience", "Audience", audience),
    ),
    h("div", { class: "row" },
      field("granularity", "Granularity", granularity),
      field("urgency", "Urgency", urgency),
    ),
    field("template", "Master template", template),
    h("div", {}, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearAlert();
    submit.disabled = true;
    let created = null;
    try {
      const body = {
        topic: topic.value.trim(),
        structure_type: type.value,
        audience: audience.value.trim(),
        granularity: Number(granularity.value),
        urgency: urgency.value,
        master_template: template.value,
      };
      if (picker) body.client_id = picker.querySelector("select").value;
      created = await api("POST", "/api/requests", body);
      const executed = await api("POST", `/api/requests/${created.request.request_id}/execute`);
      location.hash = `#/executions/${executed.execution_id}`;
    } catch (error) {
      // A request that was created but not executed shows up in the list, ready to execute.
      if (created) await route();
      showError(error);
    } finally {
      submit.disabled = false;
    }
  });
  return h("section", { class: "card" }, h("h2", { id: "new-title" }, "New request"), form);
}

// ---------------------------------------------------------------- one execution, live

const TERMINAL = ["EXECUTION_SUCCEEDED", "EXECUTION_FAILED", "EXECUTION_CANCELLED"];
const EVENT_TYPES = [
  "EXECUTION_QUEUED", "EXECUTION_STARTED", "STAGE_QUEUED", "STAGE_OFFERED", "STAGE_ACCEPTED",
  "STAGE_DECLINED", "STAGE_PROGRESS", "STAGE_SUCCEEDED", "STAGE_RETRY_SCHEDULED", "STAGE_FAILED",
  "QUALITY_BELOW_THRESHOLD", ...TERMINAL,
];

function modelWords(usage) {
  if (!usage.model && !usage.provider) return "—";
  if (usage.provider === "offline") return "offline provider (no LLM configured)";
  return `${usage.model} via ${usage.provider}`;
}

function usageFacts(usage, cost) {
  const u = usage || {};
  return h(
    "dl",
    { class: "facts", "aria-label": "Cost and token usage" },
    h("dt", {}, "Cost"), h("dd", { "data-fact": "cost" }, usd(cost !== undefined ? cost : u.cost_usd)),
    h("dt", {}, "Tokens in"), h("dd", {}, count(u.prompt_tokens)),
    h("dt", {}, "Tokens out"), h("dd", {}, count(u.completion_tokens)),
    h("dt", {}, "Model"), h("dd", {}, modelWords(u)),
    h("dt", {}, "LLM calls"), h("dd", {}, count(u.llm_calls)),
    h("dt", {}, "Worker time"), h("dd", {}, `${(Number(u.worker_time_ms || 0) / 1000).toFixed(1)} s`),
  );
}

function stageItem(stage) {
  const last = (stage.attempts || []).at(-1);
  const took = stage.start_time && stage.end_time
    ? `${((new Date(stage.end_time) - new Date(stage.start_time)) / 1000).toFixed(1)} s`
    : "";
  const quality = stage.quality && stage.quality.score ? `quality ${stage.quality.score.toFixed(1)}/100` : "";
  const problem = errorWords(stage.error);
  return h(
    "li",
    { class: statusClass(stage.status), "data-stage": stage.stage_id },
    h("strong", {}, `${stage.order}. ${stage.name}`), " ", badge(stage.status, "STAGE_STATUS_"),
    h("div", { class: "muted small" },
      [stage.capability, last ? `worker ${last.worker_id || "—"}, attempt ${last.number}` : "", took, quality]
        .filter(Boolean).join(" · ")),
    problem ? h("div", { class: "error-words" }, problem) : null,
  );
}

// ---------------------------------------------------------------- model calls of an execution

// Why a call was made: the first, or what was wrong with the call or reply before it.
const WHY = {
  first: "first call",
  INVALID_JSON: "re-ask: the reply was not JSON",
  SCHEMA_VIOLATION: "re-ask: the reply broke the schema",
  TRUNCATED: "again with more tokens: the reply was cut off",
  RATE_LIMITED: "retry: rate limited",
  PROVIDER_UNAVAILABLE: "retry: the server failed",
  PROVIDER_TIMEOUT: "retry: no reply in time",
  PROVIDER_UNREACHABLE: "retry: the server could not be reached",
  FORMAT_REJECTED: "again in a weaker format: the server refused the last one",
  PARAMETERS_REJECTED: "again without optional parameters: the server refused them",
};

function callItem(call) {
  const latency = `${seconds(call.latency).toFixed(1)} s`;
  const about = call.tokens_estimated ? "≈ " : "";
  const tokens = `${about}${count(call.prompt_tokens)} in / ${count(call.completion_tokens)} out`;
  const outcome = call.error ? h("span", { class: "badge bad" }, "failed")
    : h("span", { class: `badge ${call.finish_reason === "stop" ? "ok" : "warn"}` }, call.finish_reason || "answered");
  const summary = h("summary", {},
    h("strong", {}, `#${call.sequence} `), outcome, " ",
    `${WHY[call.why] || call.why} · ${call.model} · ${call.format_mode} · ${latency} · ${tokens} · ${usd(call.cost_usd)}`);
  const parameters = Object.entries(call.parameters || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  const texts = [
    h("p", { class: "muted small" },
      [`stage ${call.stage_id}, attempt ${call.attempt}`, when(call.start_time), call.endpoint, parameters,
        call.truncated ? "some texts were cut" : ""].filter(Boolean).join(" · ")),
  ];
  for (const message of call.messages || []) {
    texts.push(h("div", { class: "message" }, h("span", { class: "kind" }, message.role), h("pre", {}, message.content)));
  }
  if (call.response_format) {
    texts.push(h("div", { class: "message" }, h("span", { class: "kind" }, "response format"), h("pre", {}, call.response_format)));
  }
  if (call.error) texts.push(h("div", { class: "error-words" }, call.error));
  else texts.push(h("div", { class: "message reply" }, h("span", { class: "kind" }, "reply"), h("pre", {}, call.reply)));
  return h("li", { class: call.error ? "bad" : "" }, h("details", {}, summary, ...texts));
}

function callList(answer) {
  const calls = answer.calls || [];
  if (!calls.length) return [h("p", { class: "muted" }, "No model calls (yet): the offline provider makes none.")];
  const list = h("ol", { class: "calls", "aria-label": "Model calls" }, calls.map(callItem));
  if (!answer.next_page_token) return [list];
  return [list, h("p", { class: "muted small" }, `The first ${calls.length} calls are shown.`)];
}

async function viewExecution(executionId) {
  let execution = (await api("GET", `/api/executions/${executionId}`)).execution;
  const title = h("h1", {}, `${execution.spec.topic || "Execution"} `, badge(execution.status, "EXECUTION_STATUS_"));
  const bar = progressBar("Execution progress", execution.progress || 0);
  const timeline = h("ol", { class: "timeline", "aria-label": "Stage timeline" });
  const events = h("ol", { class: "events", "aria-label": "Event log", "aria-live": "polite" });
  const facts = h("div", {});
  const problem = h("div", { role: "status" });
  const actions = h("div", { class: "pager" });
  const calls = h("div", {});

  async function loadCalls() {
    try {
      const answer = await api("GET", `/api/executions/${encodeURIComponent(executionId)}/calls?page_size=200`);
      calls.replaceChildren(...callList(answer));
    } catch (error) {
      showError(error);
    }
  }

  function render() {
    title.replaceChildren(`${execution.spec.topic || "Execution"} `, badge(execution.status, "EXECUTION_STATUS_"));
    const tone = execution.status === "EXECUTION_STATUS_SUCCEEDED" ? "ok"
      : /FAILED|CANCELLED/.test(execution.status) ? "bad" : "";
    setProgress(bar, execution.progress || 0, tone);
    timeline.replaceChildren(...execution.stages.map(stageItem));
    facts.replaceChildren(usageFacts(execution.usage));
    const words = errorWords(execution.error);
    problem.replaceChildren(words ? h("div", { class: "error-words" }, words) : "");
    actions.replaceChildren();
    if (execution.job_id) {
      actions.append(h("a", { href: `#/jobs/${execution.job_id}` }, "Open the structure"));
    }
    if (/QUEUED|RUNNING/.test(execution.status)) {
      const cancel = h("button", { type: "button", class: "danger" }, "Cancel");
      cancel.addEventListener("click", () =>
        api("POST", `/api/executions/${executionId}/cancel`, { reason: "cancelled from the dashboard" }).catch(showError));
      actions.append(cancel);
    }
    if (execution.status === "EXECUTION_STATUS_FAILED") {
      const retry = h("button", { type: "button" }, "Retry from the failed stage");
      retry.addEventListener("click", async () => {
        try {
          // A request's execution is retried through KAM, which checks and charges the retry.
          await api("POST", execution.request_id
            ? `/api/requests/${execution.request_id}/retry`
            : `/api/executions/${executionId}/retry`);
          location.reload();
        } catch (error) {
          showError(error);
        }
      });
      actions.append(retry);
    }
  }

  function onEvent(message) {
    const event = JSON.parse(message.data);
    const type = words(event.type, "EVENT_TYPE_");
    const text = [event.message, errorWords(event.error)].filter(Boolean).join(" — ");
    events.append(h("li", { value: event.sequence },
      h("span", { class: "muted" }, new Date(event.time).toLocaleTimeString("en-GB")), " ",
      h("strong", {}, type), text ? ` — ${text}` : ""));
    events.scrollTop = events.scrollHeight;
    execution.progress = Math.max(execution.progress || 0, event.progress || 0);
    if (event.execution_status && event.execution_status !== "EXECUTION_STATUS_UNSPECIFIED") {
      execution.status = event.execution_status;
    }
    const stage = execution.stages.find((st) => st.stage_id === event.stage_id);
    if (stage && event.stage_status && event.stage_status !== "STAGE_STATUS_UNSPECIFIED") {
      stage.status = event.stage_status;
      if (event.error && event.error.message) stage.error = event.error;
    }
    if (event.error && event.error.message && /EXECUTION_FAILED/.test(event.type)) {
      execution.error = event.error;
    }
    render();
    if (/STAGE_(SUCCEEDED|FAILED|RETRY_SCHEDULED)$/.test(event.type)) loadCalls();
    if (TERMINAL.some((t) => event.type.endsWith(t))) {
      stream.close();
      // The final figures (cost, tokens, job) are on the execution itself.
      api("GET", `/api/executions/${executionId}`)
        .then((answer) => {
          execution = answer.execution;
          render();
        })
        .catch(showError);
    }
  }

  const stream = new EventSource(`/api/executions/${encodeURIComponent(executionId)}/events`);
  for (const type of EVENT_TYPES) stream.addEventListener(type, onEvent);
  stream.addEventListener("error", (message) => {
    if (message.data) {
      // The gateway's own error frame: the upstream failed.
      showError(new ApiError(0, JSON.parse(message.data)));
      stream.close();
    }
  });
  state.cleanup.push(() => stream.close());
  render();
  loadCalls();

  return [
    h("p", { class: "small" }, h("a", { href: "#/requests" }, "← Requests")),
    title,
    h("p", { class: "muted small" },
      `${words(execution.spec.structure_type, "STRUCTURE_TYPE_")} for ${execution.spec.audience || "anyone"} · ` +
      `template ${execution.template_name} v${execution.template_version} · ` +
      `${words(execution.priority, "PRIORITY_")} priority · execution ${execution.execution_id}`),
    bar,
    problem,
    actions,
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "stages-title" }, h("h2", { id: "stages-title" }, "Stages"), timeline),
      h("section", { class: "card", "aria-labelledby": "usage-title" }, h("h2", { id: "usage-title" }, "Cost and tokens"), facts)),
    h("section", { class: "card", "aria-labelledby": "calls-title" }, h("h2", { id: "calls-title" }, "Model calls"), calls),
    h("section", { class: "card", "aria-labelledby": "events-title" }, h("h2", { id: "events-title" }, "Events"), events),
  ];
}

// ---------------------------------------------------------------- structure viewer

function payloadText(payload) {
  if (!payload) return "";
  const lines = [];
  for (const [key, value] of Object.entries(payload)) {
    if (value === null || value === "" || (Array.isArray(value) && !value.length)) continue;
    const shown = typeof value === "object" ? JSON.stringify(value) : String(value);
    lines.push(`${key.replaceAll("_", " ")}: ${shown}`);
  }
  return lines.join("\n");
}

function buildTree(elements) {
  const children = new Map();
  for (const element of elements) {
    const list = children.get(element.parent_id || "") || [];
    list.push(element);
    children.set(element.parent_id || "", list);
  }
  function node(element, depth) {
    const kids = (children.get(element.element_id) || []).sort((a, b) => a.order - b.order);
    const label = [h("span", { class: "kind" }, element.kind), " ", element.title];
    const details = payloadText(element.payload);
    if (!kids.length) {
      return h("li", { class: "leaf" }, label, details ? h("div", { class: "payload" }, details) : null);
    }
    const open = depth < 1;
    return h(
      "li",
      {},
      h("details", { open, "data-element": element.element_id },
        h("summary", {}, label, h("span", { class: "muted small" }, ` (${kids.length})`)),
        details ? h("div", { class: "payload" }, details) : null,
        h("ul", {}, kids.map((kid) => node(kid, depth + 1)))),
    );
  }
  const roots = children.get("") || [];
  return h("ul", { class: "tree", "aria-label": "Structure" }, roots.map((root) => node(root, 0)));
}

async function viewStructure(jobId) {
  const structure = await api("GET", `/api/jobs/${jobId}/structure`);
  const tree = buildTree(structure.elements);
  const toggle = (open) => () => {
    for (const details of tree.querySelectorAll("details")) details.open = open;
  };
  return [
    h("p", { class: "small" }, h("a", { href: "#/requests" }, "← Requests")),
    h("h1", {}, `Structure: ${words(structure.structure_type, "STRUCTURE_TYPE_")}`),
    h("div", { class: "pager" },
      h("a", { href: `/api/jobs/${encodeURIComponent(jobId)}/structure?download=1`, download: "" }, "Download JSON"),
      h("button", { type: "button", class: "plain", onclick: toggle(true) }, "Expand all"),
      h("button", { type: "button", class: "plain", onclick: toggle(false) }, "Collapse all"),
      h("span", { class: "muted small" }, `${structure.elements.length} elements · job ${structure.job_id}`)),
    h("section", { class: "card" }, tree),
  ];
}

// ---------------------------------------------------------------- the mesh at work

async function viewQueue() {
  const queue = await api("GET", "/api/queue");
  const deepest = Math.max(1, ...queue.levels.map((l) => l.depth));
  const rows = queue.levels.map((level) => h(
    "tr", {},
    h("th", { scope: "row" }, words(level.priority, "PRIORITY_")),
    h("td", { class: "num" }, count(level.depth)),
    h("td", {}, meter(`${level.depth} waiting`, level.depth / deepest)),
    h("td", { class: "num" }, level.depth ? `${seconds(level.oldest_wait).toFixed(1)} s` : "—"),
  ));
  const refresh = h("button", { type: "button", class: "plain", onclick: route }, "Refresh");
  return [
    h("h1", {}, "Queue"),
    h("section", { class: "card" },
      h("dl", { class: "facts" },
        h("dt", {}, "Waiting"), h("dd", {}, count(queue.total_depth)),
        h("dt", {}, "Running"), h("dd", {}, count(queue.running)),
        h("dt", {}, "Waiting to retry"), h("dd", {}, count(queue.retry_waiting))),
      h("h2", {}, "By priority"),
      h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Priority"), h("th", { class: "num" }, "Waiting"),
          h("th", {}, "Depth"), h("th", { class: "num" }, "Oldest wait"))),
        h("tbody", {}, rows)),
      h("div", { class: "pager" }, refresh)),
  ];
}

async function viewWorkers() {
  const answer = await api("GET", "/api/workers?page_size=200");
  const rows = answer.workers.map((w) => h(
    "tr", {},
    h("td", {}, h("strong", {}, w.worker_id), h("div", { class: "muted small" }, w.address)),
    h("td", {}, badge(w.state, "WORKER_STATE_")),
    h("td", {}, meter(`${w.active_stages} of ${w.max_concurrency} busy`, w.max_concurrency ? w.active_stages / w.max_concurrency : 0),
      h("div", { class: "small" }, `${w.active_stages} / ${w.max_concurrency}`)),
    h("td", {}, (w.capabilities || []).join(", ")),
    h("td", {}, ago(w.last_heartbeat_time)),
    h("td", { class: "small" }, w.version),
  ));
  return [
    h("h1", {}, "Workers"),
    answer.workers.length
      ? h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Worker"), h("th", {}, "State"), h("th", {}, "Load"),
          h("th", {}, "Capabilities"), h("th", {}, "Last heartbeat"), h("th", {}, "Version"))),
        h("tbody", {}, rows))
      : h("p", { class: "notice" }, "No worker is registered: nothing can run. Start a granulator (bitware up starts one)."),
  ];
}

// Spent, reserved and left of the month's budget, as one stacked bar; and spend per template.
function budgetChart(usage) {
  const budget = Number(usage.monthly_budget_usd || 0);
  const spent = Number(usage.spent_usd || 0);
  const reserved = Number(usage.reserved_usd || 0);
  const scale = Math.max(budget, spent + reserved, 0.000001);
  const width = 480;
  const w = (value) => Math.max(0, (value / scale) * width);
  const label = `${usd(spent)} spent and ${usd(reserved)} reserved of a ${usd(budget)} monthly budget`;
  return s("svg", { class: "chart", viewBox: `0 0 ${width} 42`, width, height: 42, role: "img", "aria-label": label },
    s("title", {}, label),
    s("rect", { x: 0, y: 0, width, height: 18, rx: 4, fill: "#e6e9ef" }),
    s("rect", { x: 0, y: 0, width: w(spent), height: 18, rx: 4, fill: "#2f6fdf" }),
    s("rect", { x: w(spent), y: 0, width: w(reserved), height: 18, fill: "#9bb8ee" }),
    s("text", { x: 0, y: 34 }, `${usd(spent)} spent · ${usd(reserved)} reserved · ${usd(usage.remaining_usd)} left of ${usd(budget)}`));
}

function templateChart(lines) {
  if (!lines.length) return h("p", { class: "muted small" }, "Nothing spent this month.");
  const most = Math.max(...lines.map((l) => Number(l.spent_usd || 0) + Number(l.reserved_usd || 0)), 0.000001);
  const rowHeight = 22;
  const svg = s("svg", { class: "chart", viewBox: `0 0 480 ${lines.length * rowHeight}`, width: 480, height: lines.length * rowHeight, role: "img",
    "aria-label": "Spend per template: " + lines.map((l) => `${l.key} ${usd(l.spent_usd)}`).join(", ") });
  lines.forEach((line, index) => {
    const y = index * rowHeight;
    const value = Number(line.spent_usd || 0) + Number(line.reserved_usd || 0);
    svg.append(
      s("text", { x: 0, y: y + 14 }, line.key),
      s("rect", { x: 160, y: y + 4, width: Math.max(1, (value / most) * 240), height: 12, rx: 2, fill: "#2f6fdf" }),
      s("text", { x: 410, y: y + 14 }, usd(value)),
    );
  });
  return svg;
}

// The shares of the budget this month's spend has crossed (80 % and 100 %), as KAM alerted them.
function budgetAlerts(alerts) {
  if (!alerts.length) return null;
  return h("ul", { class: "budget-alerts", "aria-label": "Budget alerts" },
    ...alerts.map((alert) => h("li", { class: alert.percent >= 100 ? "error-words" : "notice" },
      `${alert.percent} % of the monthly budget reached on ${when(alert.time)} (${usd(alert.spent_usd)} spent)`)));
}

async function usagePanel(compact, clientId) {
  if (isStaff() && !clientId) {
    return compact ? h("section", { class: "card" }, h("h2", {}, "Usage"),
      h("p", { class: "muted" }, "Each client's spend against its budget is on the ", h("a", { href: "#/usage" }, "usage page"), ".")) : null;
  }
  const usage = await api("GET", "/api/usage" + query({ client_id: clientId }));
  return h(
    "section",
    { class: "card", "aria-labelledby": "usage-panel" },
    h("h2", { id: "usage-panel" }, "This month's usage"),
    budgetChart(usage),
    budgetAlerts(usage.alerts || []),
    h("p", { class: "small muted" }, `${count(usage.requests_this_month)} request${usage.requests_this_month === 1 ? "" : "s"} this month`),
    compact ? null : h("h2", {}, "By template"),
    compact ? null : templateChart(usage.by_template || []),
  );
}

async function viewUsage() {
  if (!isStaff()) return [h("h1", {}, "Usage"), await usagePanel(false)];
  await clients();
  const holder = h("div", {});
  const picker = clientPicker("usage-client", "Client", state.clients.length ? state.clients[0].client_id : "", true);
  const select = picker.querySelector("select");
  const show = async () => {
    holder.replaceChildren(select.value ? await usagePanel(false, select.value) : "");
  };
  select.addEventListener("change", () => show().catch(showError));
  await show();
  return [h("h1", {}, "Usage"), h("div", { class: "card" }, picker), holder];
}

// ---------------------------------------------------------------- administration

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

async function viewClients() {
  state.clients = null;
  const list = await clients();
  const form = h("form", { class: "inline", "aria-label": "New client" },
    field("company", "Company", h("input", { id: "company", name: "company_name", required: true })),
    field("contact", "Contact email", h("input", { id: "contact", name: "contact_email", type: "email", required: true })),
    field("tier", "Tier", h("select", { id: "tier", name: "tier" },
      ["basic", "standard", "premium", "enterprise"].map((t) => h("option", { value: t, selected: t === "standard" }, t)))),
    field("budget", "Monthly budget (USD)", h("input", { id: "budget", name: "monthly_budget_usd", type: "number", min: "0", step: "0.01", value: "25" })),
    h("button", { type: "submit" }, "Create client"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = formData(form);
    body.monthly_budget_usd = Number(body.monthly_budget_usd);
    try {
      const created = await api("POST", "/api/clients", body);
      showInfo(`Created ${created.client.company_name} (${created.client.client_id}).`);
      state.clients = null;
      await route();
      showInfo(`Created ${created.client.company_name} (${created.client.client_id}).`);
    } catch (error) {
      showError(error);
    }
  });
  const rows = list.map((c) => h("tr", {},
    h("td", {}, h("strong", {}, c.company_name), h("div", { class: "muted small mono" }, c.client_id)),
    h("td", {}, c.contact_email),
    h("td", {}, words(c.tier, "TIER_")),
    h("td", { class: "num" }, usd(c.monthly_budget_usd)),
    h("td", {}, badge(c.status, "CLIENT_STATUS_"))));
  return [
    h("h1", {}, "Clients"),
    h("section", { class: "card" }, h("h2", {}, "New client"), form),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Client"), h("th", {}, "Contact"), h("th", {}, "Tier"),
      h("th", { class: "num" }, "Budget"), h("th", {}, "Status"))), h("tbody", {}, rows)),
  ];
}

async function viewUsers() {
  await clients();
  const users = (await api("GET", "/api/users?page_size=200")).users;
  const form = h("form", { class: "inline", "aria-label": "New user" },
    field("user-email", "Email", h("input", { id: "user-email", name: "email", type: "email", required: true })),
    field("user-name", "Name", h("input", { id: "user-name", name: "display_name" })),
    field("user-password", "Initial password", h("input", { id: "user-password", name: "password", type: "password", required: true, autocomplete: "new-password" })),
    field("role", "Role", h("select", { id: "role", name: "role" },
      ["client", "support", "admin"].map((r) => h("option", { value: r }, r)))),
    clientPicker("user-client", "Client (for client users)", "", false),
    h("button", { type: "submit" }, "Create user"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await api("POST", "/api/users", formData(form));
      await route();
      showInfo(`Created ${created.user.email}.`);
    } catch (error) {
      showError(error);
    }
  });
  const rows = users.map((u) => h("tr", {},
    h("td", {}, h("strong", {}, u.email), h("div", { class: "muted small" }, u.display_name)),
    h("td", {}, words(u.role, "ROLE_")),
    h("td", {}, u.client_id ? clientName(u.client_id) : "—"),
    h("td", {}, u.active ? "active" : "inactive"),
    h("td", {}, ago(u.last_login_time))));
  return [
    h("h1", {}, "Users"),
    h("section", { class: "card" }, h("h2", {}, "New user"), form),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "User"), h("th", {}, "Role"), h("th", {}, "Client"),
      h("th", {}, "State"), h("th", {}, "Last sign-in"))), h("tbody", {}, rows)),
  ];
}

async function viewKeys() {
  const list = await clients();
  const picker = clientPicker("key-client", "Client", list.length ? list[0].client_id : "", true);
  const select = picker.querySelector("select");
  const holder = h("div", {});
  const secret = h("div", { "aria-live": "polite" });

  async function show() {
    if (!select.value) return holder.replaceChildren();
    const keys = (await api("GET", `/api/clients/${select.value}/api-keys?page_size=100`)).api_keys;
    const rows = keys.map((k) => {
      const revoke = k.revoked ? null : h("button", { type: "button", class: "danger", "aria-label": `Revoke ${k.name || k.prefix}` }, "Revoke");
      if (revoke) revoke.addEventListener("click", async () => {
        if (!confirm(`Revoke the key ${k.prefix}…? Programs using it stop working.`)) return;
        try {
          await api("DELETE", `/api/api-keys/${k.api_key_id}`);
          await show();
        } catch (error) {
          showError(error);
        }
      });
      const expired = k.expire_time && new Date(k.expire_time) <= new Date();
      const state = k.revoked ? h("span", { class: "badge bad" }, "revoked")
        : expired ? h("span", { class: "badge bad" }, "expired") : h("span", { class: "badge ok" }, "active");
      return h("tr", {},
        h("td", {}, k.name || "—"), h("td", { class: "mono" }, `${k.prefix}…`),
        h("td", {}, (k.scopes || []).join(", ")), h("td", {}, when(k.create_time)),
        h("td", {}, k.expire_time ? when(k.expire_time) : "never"), h("td", {}, ago(k.last_used_time)),
        h("td", {}, state), h("td", {}, revoke));
    });
    holder.replaceChildren(keys.length
      ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Key"), h("th", {}, "Scopes"),
        h("th", {}, "Created"), h("th", {}, "Expires"), h("th", {}, "Last used"), h("th", {}, "State"),
        h("th", {}, ""))), h("tbody", {}, rows))
      : h("p", { class: "muted" }, "This client has no API keys."));
  }

  const name = h("input", { id: "key-name", name: "name", placeholder: "ci pipeline" });
  const scopes = h("select", { id: "key-scopes", name: "scopes" },
    h("option", { value: "read,write" }, "read and write"), h("option", { value: "read" }, "read only"));
  const expiry = h("input", { id: "key-expiry", name: "expiry", type: "date" });
  const form = h("form", { class: "inline", "aria-label": "New API key" },
    field("key-name", "Name", name), field("key-scopes", "Scopes", scopes),
    field("key-expiry", "Expires (end of day, UTC; empty = never)", expiry),
    h("button", { type: "submit" }, "Create API key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value, scopes: scopes.value.split(",") };
    if (expiry.value) body.expire_time = `${expiry.value}T23:59:59Z`;
    try {
      const created = await api("POST", `/api/clients/${select.value}/api-keys`, body);
      secret.replaceChildren(h("div", { class: "secret" },
        h("strong", {}, "Copy this key now; it is not shown again: "), h("code", {}, created.key)));
      await show();
    } catch (error) {
      showError(error);
    }
  });
  select.addEventListener("change", () => {
    secret.replaceChildren();
    show().catch(showError);
  });
  await show();
  return [h("h1", {}, "API keys"), h("section", { class: "card" }, picker, form, secret), holder];
}

// ---------------------------------------------------------------- start

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/auth/logout");
  } catch {
    // signed out either way
  }
  state.me = null;
  location.hash = "#/login";
});

window.addEventListener("hashchange", route);
// After every deferred script (charts.js, overview.js) has added its routes.
document.addEventListener("DOMContentLoaded", route);
