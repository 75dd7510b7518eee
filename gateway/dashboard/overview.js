// The dashboard's Overview (charts from GET /api/overview), its Webhooks page, and the live
// refresh of Overview, Queue and Workers. Loaded after app.js and charts.js, whose helpers it
// uses; it adds its routes to app.js's table before the first route runs.
"use strict";

const OVERVIEW_REFRESH_MS = 10000;
const LIVE_REFRESH_MS = 3000;

// Calls `tick` every `ms` (after the previous one finished) while the page stays on this view.
function every(ms, tick) {
  let timer = null;
  let stopped = false;
  const next = () => {
    if (!stopped) timer = setTimeout(run, ms);
  };
  const run = async () => {
    if (!document.hidden) {
      try {
        await tick();
      } catch (error) {
        showError(error);
      }
    }
    next();
  };
  next();
  state.cleanup.push(() => {
    stopped = true;
    clearTimeout(timer);
  });
}

function clock(date) {
  return date.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function liveNote(ms) {
  return h("p", { class: "live small muted", "aria-live": "off" },
    h("span", { class: "pulse", "aria-hidden": "true" }),
    `Live · updated ${clock(new Date())} · every ${ms / 1000} s`);
}

// A view redrawn in place every `ms`, as long as it is the one shown.
function live(view, ms) {
  return async (...args) => {
    const hash = location.hash;
    const draw = async () => [...[await view(...args)].flat(), liveNote(ms)];
    every(ms, async () => {
      const fresh = await draw();
      if (location.hash === hash) document.getElementById("main").replaceChildren(...fresh);
    });
    return draw();
  };
}

// ---------------------------------------------------------------- overview

function duration(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  return value < 60 ? `${value.toFixed(1)} s` : `${(value / 60).toFixed(1)} min`;
}

// Axis labels: counts, seconds (milliseconds below a second) and dollars, to the scale's step.
const axisCount = (value, scale) => value.toFixed(scale.decimals);
const axisSeconds = (value, scale) => (scale.top < 1
  ? `${Math.round(value * 1000)} ms` : `${value.toFixed(scale.decimals)} s`);
const axisMoney = (value, scale) => `$${value.toFixed(scale.decimals)}`;

function tile(label, value, note, tone) {
  return h("div", { class: `tile ${tone || ""}` },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value" }, value),
    note ? h("div", { class: "tile-note" }, note) : null);
}

function chartCard(title, note, chart, legend) {
  return h("section", { class: "card chart-card" }, h("h2", {}, title),
    note ? h("p", { class: "small muted" }, note) : null, chart, legend);
}

function overviewPanels(data) {
  const minutes = data.minutes;
  const times = minutes.map((m) => new Date(m.time).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" }));
  const sum = data.summary;
  const finished = sum.succeeded + sum.failed + sum.cancelled;
  const month = data.days[data.days.length - 1] || { total_usd: 0 };
  const budget = data.monthly_budget_usd;
  const share = budget > 0 ? month.total_usd / budget : 0;

  const outcomes = [
    { key: "succeeded", label: "succeeded", className: "s-ok" },
    { key: "failed", label: "failed", className: "s-bad" },
    { key: "cancelled", label: "cancelled", className: "s-muted" },
  ];
  const latency = [
    { key: "p50_seconds", label: "p50", className: "s-p50", kind: "line" },
    { key: "p95_seconds", label: "p95", className: "s-p95", kind: "line" },
  ];
  const perMinute = stackedBars(
    `Executions finished per minute over the last ${minutes.length} minutes: ${sum.succeeded} succeeded, ${sum.failed} failed, ${sum.cancelled} cancelled`,
    times, minutes, outcomes, axisCount);
  addReadout(perMinute, minutes.length, (i) => [times[i],
    ...outcomes.map((o) => `${o.label}: ${minutes[i][o.key]}`)]);
  const endToEnd = lineChart(
    `End-to-end time of finished executions per minute: p50 ${duration(sum.p50_seconds)}, p95 ${duration(sum.p95_seconds)} over the window`,
    times, minutes, latency, axisSeconds);
  addReadout(endToEnd, minutes.length, (i) => [times[i],
    `p50: ${duration(minutes[i].p50_seconds)}`, `p95: ${duration(minutes[i].p95_seconds)}`]);
  const inFlight = areaChart(
    `Model calls in flight per minute; ${sum.in_flight_now} now`, times, minutes, "in_flight", "s-flight",
    axisCount);
  addReadout(inFlight, minutes.length, (i) => [times[i], `in flight: ${minutes[i].in_flight}`]);
  const dayLabels = data.days.map((d) => String(Number(d.date.slice(8))));
  const spend = spendChart(
    `Spend per day this month: ${usd(month.total_usd)} of a ${usd(budget)} budget`,
    dayLabels, data.days, budget, usd, axisMoney);
  addReadout(spend, data.days.length, (i) => [data.days[i].date,
    `that day: ${usd(data.days[i].spent_usd)}`, `month so far: ${usd(data.days[i].total_usd)}`]);

  return [
    h("div", { class: "tiles" },
      tile("Finished", count(finished), `last ${minutes.length < 120 ? `${minutes.length} min` : `${minutes.length / 60} h`}`),
      tile("Succeeded", finished ? `${Math.round((sum.succeeded / finished) * 100)} %` : "—",
        `${sum.failed} failed · ${sum.cancelled} cancelled`, finished && sum.failed ? "warn" : "ok"),
      tile("End-to-end p95", duration(sum.p95_seconds), `p50 ${duration(sum.p50_seconds)}`),
      tile("In flight now", count(sum.in_flight_now), "model calls"),
      tile("Spent this month", usd(month.total_usd), budget > 0 ? `${Math.round(share * 100)} % of ${usd(budget)}` : "no budget set",
        share >= 1 ? "bad" : share >= 0.8 ? "warn" : "")),
    h("div", { class: "charts" },
      chartCard("Executions per minute", "By outcome, when they ended.", perMinute, chartLegend(outcomes)),
      chartCard("End-to-end time", "From created to ended, per minute.", endToEnd, chartLegend(latency)),
      chartCard("Model calls in flight", "Stage attempts running on workers; each makes its model calls one at a time.",
        inFlight, chartLegend([{ label: "in flight", className: "s-flight" }])),
      chartCard("Spend per day", "Charged as requests settle; the line is the month's running total.", spend,
        chartLegend([{ label: "that day", className: "s-spend" },
          { label: "month so far", className: "s-total", kind: "line" },
          { label: "monthly budget", className: "s-budget", kind: "dash" }]))),
    data.partial ? h("p", { class: "small muted" }, "Only the most recent executions and requests are counted.") : null,
  ].filter(Boolean);
}

const WINDOWS = [["15", "15 minutes"], ["60", "1 hour"], ["360", "6 hours"], ["1440", "24 hours"]];

async function viewOverview() {
  const holder = h("div", {});
  let clientId = "";
  let minutes = "60";
  const draw = async () => {
    const data = await api("GET", "/api/overview" + query({ client_id: clientId, minutes }));
    holder.replaceChildren(...overviewPanels(data), liveNote(OVERVIEW_REFRESH_MS));
  };
  const windowSelect = h("select", { id: "overview-window" },
    ...WINDOWS.map(([value, text]) => h("option", { value, selected: value === minutes }, text)));
  windowSelect.addEventListener("change", () => {
    minutes = windowSelect.value;
    draw().catch(showError);
  });
  const head = [h("h1", {}, "Overview"), field("overview-window", "Window", windowSelect)];
  if (isStaff()) {
    await clients();
    const picker = clientPicker("overview-client", "Client", "", false);
    picker.classList.add("picker");
    picker.querySelector("select").addEventListener("change", (event) => {
      clientId = event.target.value;
      draw().catch(showError);
    });
    head.push(picker);
  }
  await draw();
  every(OVERVIEW_REFRESH_MS, draw);
  return [h("div", { class: "heading" }, ...head), holder];
}

// ---------------------------------------------------------------- webhooks

const WEBHOOK_EVENTS = ["request.completed", "request.failed", "request.cancelled", "budget.threshold"];

function deliveryRows(deliveries, endpoints) {
  const urlOf = (id) => (endpoints.find((e) => e.endpoint_id === id) || { url: id }).url;
  return deliveries.map((d) => h("tr", {},
    h("td", {}, when(d.create_time)),
    h("td", {}, h("details", {}, h("summary", {}, d.event_type), h("pre", { class: "payload" }, d.payload))),
    h("td", { class: "small mono" }, urlOf(d.endpoint_id)),
    h("td", {}, badge(d.status, "DELIVERY_STATUS_")),
    h("td", { class: "num" }, count(d.attempts)),
    h("td", { class: "num" }, d.last_http_status || "—"),
    h("td", { class: "small" }, d.last_error || "",
      d.next_attempt_time ? h("div", { class: "muted" }, `next try ${when(d.next_attempt_time)}`) : null)));
}

async function viewWebhooks() {
  const holder = h("div", {});
  const secret = h("div", { "aria-live": "polite" });
  let clientId = state.me.client_id || "";
  const head = [h("h1", {}, "Webhooks")];
  if (!clientId) {
    const list = await clients();
    clientId = list.length ? list[0].client_id : "";
    const picker = clientPicker("webhook-client", "Client", clientId, true);
    picker.classList.add("picker");
    picker.querySelector("select").addEventListener("change", (event) => {
      clientId = event.target.value;
      secret.replaceChildren();
      show().catch(showError);
    });
    head.push(picker);
  }

  async function show() {
    if (!clientId) return holder.replaceChildren(h("p", { class: "muted" }, "There is no client yet."));
    const [endpoints, deliveries] = await Promise.all([
      api("GET", "/api/webhooks" + query({ client_id: clientId, page_size: 100 })),
      api("GET", "/api/webhook-deliveries" + query({ client_id: clientId, page_size: 50 })),
    ]);
    const rows = endpoints.endpoints.map((e) => {
      const remove = h("button", { type: "button", class: "danger", "aria-label": `Delete ${e.url}` }, "Delete");
      remove.addEventListener("click", async () => {
        if (!confirm(`Delete the endpoint ${e.url}? Events not yet delivered to it are dropped.`)) return;
        try {
          await api("DELETE", `/api/webhooks/${e.endpoint_id}`);
          await show();
        } catch (error) {
          showError(error);
        }
      });
      return h("tr", {}, h("td", { class: "mono small" }, e.url), h("td", {}, e.description || "—"),
        h("td", { class: "small" }, (e.event_types || []).length ? e.event_types.join(", ") : "all events"),
        h("td", {}, when(e.create_time)), h("td", {}, remove));
    });
    holder.replaceChildren(
      h("section", { class: "card" }, h("h2", {}, "Endpoints"),
        rows.length
          ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "URL"), h("th", {}, "Note"), h("th", {}, "Events"),
            h("th", {}, "Created"), h("th", {}, ""))), h("tbody", {}, rows))
          : h("p", { class: "muted" }, "No endpoint yet: events are not posted anywhere.")),
      h("section", { class: "card" }, h("h2", {}, "Delivery log"),
        deliveries.deliveries.length
          ? h("table", { class: "deliveries" }, h("thead", {}, h("tr", {}, h("th", {}, "Event time"), h("th", {}, "Event"),
            h("th", {}, "Endpoint"), h("th", {}, "Status"), h("th", { class: "num" }, "Attempts"),
            h("th", { class: "num" }, "HTTP"), h("th", {}, "Last error"))),
          h("tbody", {}, deliveryRows(deliveries.deliveries, endpoints.endpoints)))
          : h("p", { class: "muted" }, "Nothing delivered yet.")),
    );
  }

  const url = h("input", { id: "webhook-url", name: "url", type: "url", required: true, placeholder: "https://hooks.example.com/bitware", size: 40 });
  const note = h("input", { id: "webhook-note", name: "description", maxlength: 200, placeholder: "billing system" });
  const kinds = h("select", { id: "webhook-events", name: "event_types" },
    h("option", { value: "" }, "all events"), ...WEBHOOK_EVENTS.map((kind) => h("option", { value: kind }, kind)));
  const form = h("form", { class: "inline", "aria-label": "New webhook endpoint" },
    field("webhook-url", "URL", url), field("webhook-note", "Note", note), field("webhook-events", "Events", kinds),
    h("button", { type: "submit" }, "Add endpoint"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await api("POST", "/api/webhooks", {
        client_id: state.me.client_id ? "" : clientId, url: url.value, description: note.value,
        event_types: kinds.value ? [kinds.value] : [],
      });
      secret.replaceChildren(h("div", { class: "secret" },
        h("strong", {}, "Copy this signing secret now; it is not shown again: "), h("code", {}, created.signing_secret)));
      form.reset();
      await show();
    } catch (error) {
      showError(error);
    }
  });
  await show();
  every(LIVE_REFRESH_MS * 2, show);
  return [h("div", { class: "heading" }, ...head),
    h("section", { class: "card" }, h("p", { class: "small muted" },
      "KAM posts a signed JSON event to each endpoint when a request finishes or the month's spend reaches 80 % or 100 % of the budget. ",
      "Check the Bitware-Signature header with the endpoint's secret; failed posts are retried for 24 hours, in order."),
    form, secret), holder];
}

// ---------------------------------------------------------------- routes

routes.unshift([/^#\/overview$/, viewOverview], [/^#\/webhooks$/, viewWebhooks]);
for (const entry of routes) {
  if (entry[1] === viewQueue || entry[1] === viewWorkers) entry[1] = live(entry[1], LIVE_REFRESH_MS);
}
