// Small SVG time-series charts for the dashboard's Overview, written by hand rather than vendored:
// four charts of at most a day of minutes need axes, bars, lines, a budget line and a hover
// read-out, which fits in this file; SVG stays crisp at any size, takes the page's fonts and
// colours from CSS, and each chart carries a text description for screen readers.
// Uses `s()` (SVG elements) and `h()` (HTML) from app.js.
"use strict";

const CHART = { width: 640, height: 220, left: 48, right: 14, top: 14, bottom: 28 };

// A y axis of four equal steps of 1, 2, 2.5 or 5 × 10^n reaching at least `max`; `integer`
// keeps steps whole (counts). Returns the top, the step and the decimals its labels need.
function niceScale(max, integer) {
  const raw = Math.max(max, integer ? 1 : 1e-6) / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = power * 10;
  for (const factor of [1, 2, 2.5, 5, 10]) {
    const candidate = factor * power;
    if (candidate >= raw * (1 - 1e-9) && (!integer || Number.isInteger(candidate))) {
      step = candidate;
      break;
    }
  }
  if (integer) step = Math.max(1, Math.round(step));
  let decimals = 0;
  while (decimals < 6 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-6) decimals++;
  return { top: step * 4, step, decimals };
}

function plotArea() {
  return {
    x0: CHART.left, x1: CHART.width - CHART.right,
    y0: CHART.height - CHART.bottom, y1: CHART.top,
  };
}

// The frame every chart shares: horizontal grid lines with y labels, and a few x labels.
function chartFrame(label, xLabels, scale, yFormat) {
  const area = plotArea();
  const svg = s("svg", {
    class: "chart timeseries", viewBox: `0 0 ${CHART.width} ${CHART.height}`,
    role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet",
  }, s("title", {}, label));
  const ticks = 4;
  for (let n = 0; n <= ticks; n++) {
    const y = area.y0 - ((area.y0 - area.y1) * n) / ticks;
    svg.append(
      s("line", { class: n ? "grid" : "axis", x1: area.x0, x2: area.x1, y1: y, y2: y }),
      s("text", { class: "tick", x: area.x0 - 6, y: y + 4, "text-anchor": "end" }, yFormat(scale.step * n, scale)),
    );
  }
  const slots = xLabels.length;
  const every = Math.max(1, Math.ceil(slots / 6));
  xLabels.forEach((text, index) => {
    if (index % every && index !== slots - 1) return;
    if (index !== slots - 1 && slots - 1 - index < every / 2) return; // keep the last label clear
    const x = area.x0 + ((index + 0.5) * (area.x1 - area.x0)) / slots;
    svg.append(s("text", { class: "tick", x, y: area.y0 + 18, "text-anchor": "middle" }, text));
  });
  return svg;
}

function slotX(index, slots) {
  const area = plotArea();
  return area.x0 + ((index + 0.5) * (area.x1 - area.x0)) / slots;
}

function valueY(value, top) {
  const area = plotArea();
  return area.y0 - (Math.max(0, value) / top) * (area.y0 - area.y1);
}

// A hover read-out: a vertical rule and a box listing each series at the nearest point.
function addReadout(svg, slots, describe) {
  const area = plotArea();
  const rule = s("line", { class: "rule", x1: 0, x2: 0, y1: area.y1, y2: area.y0, visibility: "hidden" });
  const box = s("g", { class: "readout", visibility: "hidden" });
  const catcher = s("rect", {
    x: area.x0, y: area.y1, width: area.x1 - area.x0, height: area.y0 - area.y1, fill: "transparent",
  });
  svg.append(rule, box, catcher);
  catcher.addEventListener("mousemove", (event) => {
    const point = svg.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const local = point.matrixTransform(svg.getScreenCTM().inverse());
    const index = Math.max(0, Math.min(slots - 1, Math.floor(((local.x - area.x0) / (area.x1 - area.x0)) * slots)));
    const x = slotX(index, slots);
    rule.setAttribute("x1", x);
    rule.setAttribute("x2", x);
    const lines = describe(index);
    const width = 12 + 7 * Math.max(...lines.map((line) => line.length));
    const left = x + width + 10 > area.x1 ? x - width - 8 : x + 8;
    box.replaceChildren(
      s("rect", { x: left, y: area.y1 + 2, width, height: 8 + 16 * lines.length, rx: 4 }),
      ...lines.map((line, n) => s("text", { x: left + 6, y: area.y1 + 18 + 16 * n }, line)),
    );
    rule.setAttribute("visibility", "visible");
    box.setAttribute("visibility", "visible");
  });
  catcher.addEventListener("mouseleave", () => {
    rule.setAttribute("visibility", "hidden");
    box.setAttribute("visibility", "hidden");
  });
}

// A legend under a chart: a swatch and a name per series.
function chartLegend(series) {
  return h("ul", { class: "legend" }, ...series.map((one) => h("li", {},
    h("span", { class: `swatch ${one.kind || "box"} ${one.className}` }), one.label)));
}

// Bars stacked per slot, one colour per series.
function stackedBars(label, xLabels, points, series, yFormat) {
  const scale = niceScale(Math.max(0, ...points.map((p) => series.reduce((sum, one) => sum + (p[one.key] || 0), 0))), true);
  const top = scale.top;
  const svg = chartFrame(label, xLabels, scale, yFormat);
  const area = plotArea();
  const slot = (area.x1 - area.x0) / points.length;
  const width = Math.max(1, slot * 0.72);
  points.forEach((point, index) => {
    let base = 0;
    for (const one of series) {
      const value = point[one.key] || 0;
      if (!value) continue;
      const y = valueY(base + value, top);
      svg.append(s("rect", {
        class: one.className, x: slotX(index, points.length) - width / 2, y,
        width, height: valueY(base, top) - y,
      }));
      base += value;
    }
  });
  return svg;
}

// Lines per series; a null value leaves a gap (no data that minute).
function lineSeries(svg, points, series, top) {
  for (const one of series) {
    let path = "";
    let drawing = false;
    points.forEach((point, index) => {
      const value = point[one.key];
      if (value === null || value === undefined) {
        drawing = false;
        return;
      }
      const x = slotX(index, points.length);
      const y = valueY(value, top);
      path += `${drawing ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)} `;
      drawing = true;
      // A point alone between gaps would draw nothing: mark it with a dot.
      const prev = points[index - 1];
      const next = points[index + 1];
      const alone = (!prev || prev[one.key] == null) && (!next || next[one.key] == null);
      if (alone) svg.append(s("circle", { class: `dot ${one.className}`, cx: x, cy: y, r: 2.5 }));
    });
    if (path) svg.append(s("path", { class: `line ${one.className}`, d: path.trim() }));
  }
}

function lineChart(label, xLabels, points, series, yFormat) {
  const values = points.flatMap((p) => series.map((one) => p[one.key])).filter((v) => v != null);
  const scale = niceScale(Math.max(0, ...values), false);
  const svg = chartFrame(label, xLabels, scale, yFormat);
  lineSeries(svg, points, series, scale.top);
  return svg;
}

// A filled step area (counts over time, such as work in flight).
function areaChart(label, xLabels, points, key, className, yFormat) {
  const scale = niceScale(Math.max(0, ...points.map((p) => p[key] || 0)), true);
  const top = scale.top;
  const svg = chartFrame(label, xLabels, scale, yFormat);
  const area = plotArea();
  const slot = (area.x1 - area.x0) / points.length;
  let d = `M${area.x0},${area.y0} `;
  points.forEach((point, index) => {
    const y = valueY(point[key] || 0, top).toFixed(1);
    d += `L${(area.x0 + index * slot).toFixed(1)},${y} L${(area.x0 + (index + 1) * slot).toFixed(1)},${y} `;
  });
  d += `L${area.x1},${area.y0} Z`;
  svg.append(s("path", { class: `area ${className}`, d }));
  return svg;
}

// Bars per day, the running total as a line, and the budget as a dashed line across.
function spendChart(label, xLabels, days, budget, money, axisMoney) {
  // Headroom above the budget, so that its line and label stay clear of the top edge.
  const scale = niceScale(Math.max(budget * 1.1, ...days.map((d) => d.total_usd)), false);
  const top = scale.top;
  const svg = chartFrame(label, xLabels, scale, axisMoney);
  const area = plotArea();
  const width = Math.max(1, ((area.x1 - area.x0) / days.length) * 0.6);
  days.forEach((day, index) => {
    if (!day.spent_usd) return;
    const y = valueY(day.spent_usd, top);
    svg.append(s("rect", { class: "spend", x: slotX(index, days.length) - width / 2, y, width, height: area.y0 - y }));
  });
  lineSeries(svg, days, [{ key: "total_usd", className: "total" }], top);
  if (budget > 0) {
    const y = valueY(budget, top);
    svg.append(
      s("line", { class: "budget", x1: area.x0, x2: area.x1, y1: y, y2: y }),
      s("text", { class: "budget-label", x: area.x1 - 4, y: y - 5, "text-anchor": "end" }, `budget ${money(budget)}`),
    );
  }
  return svg;
}
