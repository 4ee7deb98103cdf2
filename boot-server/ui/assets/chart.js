// chart.js: time series charts with uPlot (vendor/, pinned in ../package.json).
import uPlot from "./vendor/uPlot.esm.js";
import { h } from "./dom.js";

/**
 * A line chart in `box`: series [{label, stroke}], data [[t_seconds...], [y...]...].
 * Returns {set(data)} to redraw with new data.
 */
export function lineChart(box, series, data, opts = {}) {
  const el = h("div", { class: "chart" });
  box.append(el);
  const width = () => Math.max(320, box.clientWidth - 20);
  const plot = new uPlot({
    width: width(), height: opts.height || 220,
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, spanGaps: true, points: { show: true, size: 4 } }))],
    axes: [{}, { label: opts.yLabel || "" }],
    // At least the last 10 minutes up to now (one sample alone would span years), load from 0.
    scales: {
      x: { time: true, range: (u, min, max) => { const now = Date.now() / 1000; return [Math.min(min ?? now, now - 600), Math.max(max ?? now, now)]; } },
      y: { range: (u, min, max) => [0, Math.max(1, (max ?? 0) * 1.1)] },
    },
  }, data, el);
  const onResize = () => plot.setSize({ width: width(), height: opts.height || 220 });
  window.addEventListener("resize", onResize);
  return { set: (d) => plot.setData(d), destroy: () => { window.removeEventListener("resize", onResize); plot.destroy(); } };
}
