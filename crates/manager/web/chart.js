// Small SVG graphs drawn from arrays of numbers (no chart library): a sparkline for the VM list
// and a titled graph with a scale for a VM's page. Values may hold nulls (no sample): the line
// breaks there. Colours come from the CSS classes `series-0`, `series-1`.

import { h, svg } from './dom.js';

/** The path of one series scaled into width × height (y grows downwards), `max` at the top. */
function linePath(values, width, height, max, slots) {
  const step = width / Math.max(1, slots - 1);
  const offset = slots - values.length; // the newest sample is always at the right edge
  let d = '';
  let drawing = false;
  values.forEach((value, index) => {
    if (value === null || value === undefined || Number.isNaN(value)) {
      drawing = false;
      return;
    }
    const x = (offset + index) * step;
    const y = height - (Math.min(value, max) / max) * height;
    d += `${drawing ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)} `;
    drawing = true;
  });
  return d.trim();
}

function maxOf(series, floor) {
  const values = series.flatMap((s) => s.values).filter((v) => typeof v === 'number' && !Number.isNaN(v));
  return Math.max(floor, ...values);
}

/**
 * A sparkline: each series scaled to its own maximum (a shape, not a scale), e.g. CPU and I/O.
 * `series` is `[{ values, label }]`; `slots` is how many samples fill the width.
 */
export function sparkline(series, { width = 120, height = 26, slots = 60, test } = {}) {
  const node = svg('svg', {
    class: 'sparkline', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'data-test': test ?? 'sparkline', 'data-samples': series[0]?.values.length ?? 0,
  });
  node.append(svg('title', {}, series.map((s) => s.label).join(' and ')));
  series.forEach((s, index) => {
    const max = maxOf([s], 1e-9);
    node.append(svg('path', { class: `line series-${index}`, d: linePath(s.values, width, height - 2, max, slots) }));
  });
  return node;
}

/**
 * A graph with a title, the latest value of each series, and its scale (the largest value, at
 * least `floor`, shown at the top). `format` turns a value into text.
 */
export function graph({ title, series, format, floor = 1, slots = 60, fixedMax, test }) {
  const [width, height] = [300, 90];
  const max = fixedMax ?? maxOf(series, floor);
  const plot = svg('svg', {
    class: 'graph', viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none', role: 'img',
  });
  for (const fraction of [0.25, 0.5, 0.75]) {
    plot.append(svg('line', { class: 'grid', x1: 0, x2: width, y1: height * fraction, y2: height * fraction }));
  }
  series.forEach((s, index) => {
    plot.append(svg('path', {
      class: `line series-${index}`, d: linePath(s.values, width, height, max, slots),
      'vector-effect': 'non-scaling-stroke',
    }));
  });
  const latest = (values) => {
    const last = values.at(-1);
    return last === null || last === undefined ? '—' : format(last);
  };
  return h('figure.chart', { test: test ?? 'graph', dataset: { samples: series[0]?.values.length ?? 0 } },
    h('figcaption', {},
      h('span.chart-title', {}, title),
      h('span.chart-scale', {}, `max ${format(max)}`)),
    plot,
    h('div.legend', {}, series.map((s, index) =>
      h(`span.series-${index}`, {}, h('i.swatch'), `${s.label} `, h('b', {}, latest(s.values))))));
}
