// One past session: each link's level over the whole session, and its disruption ledger,
// from the JSON the page carries (no extra request).

import { createChart, drawChart } from './ops-chart.js';
import { renderLedger, utc } from './ops-view.js';
import { el } from './ui.js';

const data = JSON.parse(document.getElementById('session-data').textContent);
const box = document.getElementById('links');

if (!data.links.length) box.replaceChildren(el('p', { class: 'muted' }, 'No link was ever judged in this session.'));
const charts = [];
for (const link of data.links) {
  const svg = createChart();
  const summary = el('p', { class: 'chart-summary' });
  box.append(el('figure', { class: 'ops-link', 'data-link': link.key },
    el('figcaption', {}, el('span', {}, link.label)), svg, summary));
  const draw = () => drawChart(svg, link.points, {
    start: data.started_at, end: data.ended_at, label: link.label, when: 'at the end',
    startLabel: `${utc(data.started_at)} UTC`, endLabel: `${utc(data.ended_at)} UTC`,
  });
  draw();
  charts.push(draw);
  summary.textContent = svg.getAttribute('aria-label');
}
// Charts are drawn in pixels: draw again when the page changes width.
new ResizeObserver(() => charts.forEach((draw) => draw())).observe(box);
renderLedger(document.getElementById('ledger'), data.ledger, data.people_labels);
