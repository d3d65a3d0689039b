// jetfleet console: device charts (uPlot) with event marks. HTMX does the rest.
(function () {
  "use strict";

  const CHARTS = [
    { key: "cpu", title: "CPU %", label: "cpu %" },
    { key: "mem", title: "Memory %", label: "mem %" },
    { key: "gpu_load", title: "GPU load %", label: "gpu %", gpu: true },
    { key: "gpu_temp", title: "GPU temperature °C", label: "°C", gpu: true },
    { key: "gpu_power_w", title: "GPU power W", label: "W", gpu: true },
    { key: "rate", title: "Inferences / s", label: "inf/s" },
    { key: "p95", title: "p95 latency ms", label: "p95 ms" },
    { key: "errors", title: "Inference errors", label: "errors" },
  ];

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  function marksPlugin(getMarks) {
    return {
      hooks: {
        draw: [
          (u) => {
            u.over.querySelectorAll(".mark").forEach((m) => m.remove());
            for (const mark of getMarks()) {
              const x = u.valToPos(mark.t, "x");
              if (x < 0 || x > u.over.clientWidth) continue;
              const el = document.createElement("div");
              el.className = "mark " + mark.kind;
              el.style.left = x + "px";
              el.title = mark.label;
              u.over.appendChild(el);
            }
          },
        ],
      },
    };
  }

  function makeChart(host, spec, data, state) {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.key = spec.key;
    box.innerHTML = "<h3></h3>";
    box.querySelector("h3").textContent = spec.title;
    host.appendChild(box);
    const width = Math.max(280, Math.floor(box.getBoundingClientRect().width) || 360);
    const opts = {
      width: width,
      height: 170,
      // The window moves with every refresh: read it from state, not this first load.
      scales: { x: { time: true, range: () => state.window } },
      axes: [
        { stroke: css("--muted"), grid: { stroke: css("--line") } },
        { stroke: css("--muted"), grid: { stroke: css("--line") }, size: 50 },
      ],
      series: [{}, { label: spec.label, stroke: css("--accent"), width: 1.5, spanGaps: false }],
      plugins: [marksPlugin(() => state.marks)],
    };
    return new uPlot(opts, [data.t, data[spec.key]], box);
  }

  function note(parent, cls, text) {
    const p = document.createElement("p");
    p.className = cls;
    p.textContent = text;
    parent.appendChild(p);
  }

  function render(host, data, state) {
    host.innerHTML = "";
    state.plots = {};
    const notes = document.getElementById("chart-notes");
    if (notes) {
      notes.innerHTML = "";
      if (!data.samples) {
        note(notes, "empty", "No telemetry in this window. Agents report every few seconds once online.");
      }
      if (!data.gpu) {
        note(notes, "muted no-gpu", "No GPU on this host: GPU load, temperature and power are not reported.");
      }
    }
    for (const spec of CHARTS) {
      if (spec.gpu && !data.gpu) continue;
      state.plots[spec.key] = makeChart(host, spec, data, state);
    }
  }

  function update(host, data, state) {
    state.marks = data.marks;
    state.window = data.window;
    const gpuChanged = state.gpu !== data.gpu || state.hadSamples !== !!data.samples;
    state.gpu = data.gpu;
    state.hadSamples = !!data.samples;
    if (gpuChanged || !state.plots) {
      render(host, data, state);
      return;
    }
    for (const [key, plot] of Object.entries(state.plots)) {
      plot.setScale("x", { min: data.window[0], max: data.window[1] });
      plot.setData([data.t, data[key]]);
    }
  }

  async function load(host, state) {
    try {
      const response = await fetch(host.dataset.series, { credentials: "same-origin" });
      if (response.status === 401) { window.location = "/console/login"; return; }
      if (!response.ok) return;
      update(host, await response.json(), state);
      host.dataset.loaded = String(Date.now());
    } catch (err) {
      // Server briefly unreachable: keep the last charts, try again on the next tick.
      host.dataset.error = String(err);
    }
  }

  function init() {
    const host = document.getElementById("charts");
    if (!host || typeof uPlot === "undefined") return;
    const state = { marks: [] };
    load(host, state);
    const every = parseInt(host.dataset.refresh || "5000", 10);
    setInterval(() => { if (!document.hidden) load(host, state); }, every);
  }

  document.addEventListener("DOMContentLoaded", init);
})();
