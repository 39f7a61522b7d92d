// The strength-over-time chart (Chart.js, vendored in ../vendor/): one marker per event at the
// strength right after it, and the model's decay drawn between events. The canvas is
// keyboard-focusable: arrow keys move between events and the tooltip says what each was.

import { eventLabel, fmtDate, fmtTime } from "./dom.js";

const COLORS = { event: "#0b5cad", curve: "#5f6b7a", grid: "#e3e7ec", text: "#1f2933" };

function eventLines(ev) {
  const lines = [];
  if (ev.reason) lines.push(ev.reason);
  lines.push(`contribution: +${Number(ev.contribution).toFixed(2)} points`);
  lines.push(`strength after: ${Number(ev.strength_after).toFixed(1)}`);
  if (ev.recorded_by) lines.push(`recorded by ${ev.recorded_by}`);
  return lines;
}

/** Draws (or redraws) the chart on `canvas`; `events` are the timeline's events, `curve` the
 *  decay points [{x, y}]. Returns the Chart instance. */
export function drawStrengthChart(canvas, events, curve, announce) {
  const Chart = window.Chart;
  Chart.getChart(canvas)?.destroy();
  const points = events.map((e) => ({ x: Date.parse(e.occurred_at), y: e.strength_after, event: e }));
  const xs = [...points, ...curve].map((p) => p.x);
  const chart = new Chart(canvas, {
    type: "line",
    data: {
      datasets: [
        {
          label: "strength after each event",
          data: points,
          showLine: false,
          pointRadius: 4,
          pointHoverRadius: 7,
          pointBackgroundColor: COLORS.event,
          borderColor: COLORS.event,
          order: 0,
        },
        {
          label: "decay between events",
          data: curve,
          pointRadius: 0,
          pointHitRadius: 0,
          borderWidth: 2,
          borderColor: COLORS.curve,
          tension: 0,
          order: 1,
        },
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: {
          type: "linear",
          min: Math.min(...xs),
          max: Math.max(...xs),
          ticks: { callback: (v) => fmtDate(v), maxTicksLimit: 6, color: COLORS.text },
          grid: { color: COLORS.grid },
        },
        y: {
          min: 0,
          max: 100,
          title: { display: true, text: "strength (0-100)", color: COLORS.text },
          ticks: { color: COLORS.text },
          grid: { color: COLORS.grid },
        },
      },
      interaction: { mode: "nearest", intersect: false, axis: "x" },
      plugins: {
        legend: { labels: { color: COLORS.text, usePointStyle: true } },
        tooltip: {
          filter: (item) => item.datasetIndex === 0,
          callbacks: {
            title: (items) => {
              const ev = items[0]?.raw?.event;
              return ev ? `${eventLabel(ev.type)} · ${fmtTime(ev.occurred_at)}` : "";
            },
            label: (item) => (item.raw.event ? eventLines(item.raw.event) : ""),
          },
        },
      },
    },
  });
  keyboard(canvas, chart, announce);
  return chart;
}

/** Arrow keys / Home / End walk the event markers, with the tooltip and a spoken summary. */
function keyboard(canvas, chart, announce) {
  canvas.onkeydown = (e) => {
    const n = chart.data.datasets[0].data.length;
    if (!n) return;
    const active = chart.getActiveElements().find((a) => a.datasetIndex === 0);
    let i = active ? active.index : -1;
    if (e.key === "ArrowRight") i = Math.min(i + 1, n - 1);
    else if (e.key === "ArrowLeft") i = Math.max(i - 1, 0);
    else if (e.key === "Home") i = 0;
    else if (e.key === "End") i = n - 1;
    else return;
    e.preventDefault();
    const el = [{ datasetIndex: 0, index: i }];
    const meta = chart.getDatasetMeta(0).data[i];
    chart.setActiveElements(el);
    chart.tooltip.setActiveElements(el, { x: meta.x, y: meta.y });
    chart.update();
    const ev = chart.data.datasets[0].data[i].event;
    announce?.(`Event ${i + 1} of ${n}: ${eventLabel(ev.type)} on ${fmtDate(ev.occurred_at)}. ${eventLines(ev).join(". ")}.`);
  };
}
