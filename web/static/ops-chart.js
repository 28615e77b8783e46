// Link quality charts, drawn by the app itself as SVG (no library, no CDN): a step line of
// the link's level over time, one colour per level and the level's name on the left axis,
// and a bar under the line while the link ran through the TURN relay.
//
// A series is a list of points [t, code], oldest first; each point holds until the next
// (the last for `hold` seconds, or to `end`). A code is the level's rank (0 lost ... 3 good),
// plus RELAYED when relayed; NO_DATA is a gap (signaling/history.py makes them).

export const LEVELS = ['lost', 'poor', 'fair', 'good'];
export const RELAYED = 4;
export const NO_DATA = -1;

const NS = 'http://www.w3.org/2000/svg';
// Drawn in the element's own pixels (the height is fixed in ops.css), so that text and
// lines keep their size at any width; the width is read at each draw.
const FALLBACK_WIDTH = 480;
const HEIGHT = 112;
const LEFT = 40;
const RIGHT = 6;
const TOP = 6;
const ROW = 20;
const RELAY_Y = TOP + 4 * ROW + 3;
const AXIS_Y = HEIGHT - 3;

/** @param {number|null|undefined} code @returns {{level: string, relay: boolean}|null} */
export function decode(code) {
  if (code === null || code === undefined || code < 0) return null;
  return { level: LEVELS[code % RELAYED], relay: code >= RELAYED };
}

/** Merge consecutive equal codes: [{from, to, code}]. */
export function runs(points, { end, hold }) {
  const out = [];
  points.forEach(([t, code], i) => {
    const next = i + 1 < points.length ? points[i + 1][0] : Math.min(end, t + (hold ?? Infinity));
    const last = out[out.length - 1];
    if (last && last.code === code && last.to === t) last.to = next;
    else out.push({ from: t, to: next, code });
  });
  return out.filter((run) => run.to > run.from);
}

/** The level now, and the share of the judged time at fair or better. */
export function summarize(points, { end, hold }) {
  let judged = 0;
  let usable = 0;
  for (const run of runs(points, { end, hold })) {
    const level = decode(run.code);
    if (!level) continue;
    judged += run.to - run.from;
    if (LEVELS.indexOf(level.level) >= 2) usable += run.to - run.from;
  }
  const last = points.length ? decode(points[points.length - 1][1]) : null;
  return { now: last, share: judged > 0 ? usable / judged : null };
}

function node(name, attrs, text) {
  const el = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** An empty chart; `drawChart` fills it. */
export function createChart() {
  const svg = node('svg', { viewBox: `0 0 ${FALLBACK_WIDTH} ${HEIGHT}`, class: 'ops-chart', role: 'img', focusable: 'false' });
  svg.dataset.points = '0';
  return svg;
}

const y = (rank) => TOP + (3 - rank) * ROW + ROW / 2;

/**
 * Draw `points` between `start` and `end` (seconds).
 * @param {SVGSVGElement} svg
 * @param {Array<[number, number]>} points
 * @param {{start: number, end: number, hold?: number, startLabel: string, endLabel: string,
 *          label: string, when?: string}} options  `when` names the last moment ("now", "at the end")
 */
export function drawChart(svg, points, options) {
  const { start, end, hold, startLabel, endLabel, label, when = 'now' } = options;
  const WIDTH = Math.round(svg.getBoundingClientRect().width) || FALLBACK_WIDTH;
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  const span = Math.max(end - start, 1);
  const x = (t) => LEFT + (Math.min(Math.max(t, start), end) - start) / span * (WIDTH - LEFT - RIGHT);
  const parts = [];
  LEVELS.forEach((name, rank) => {
    parts.push(node('line', { class: 'grid', x1: LEFT, x2: WIDTH - RIGHT, y1: y(rank), y2: y(rank) }));
    parts.push(node('text', { class: 'axis', x: 2, y: y(rank) + 4 }, name));
  });
  /** @type {{to: number, rank: number}|null} */
  let previous = null;
  for (const run of runs(points, { end, hold })) {
    const level = decode(run.code);
    if (!level || run.to <= start) {
      previous = null;
      continue;
    }
    const rank = LEVELS.indexOf(level.level);
    const x1 = x(run.from);
    const x2 = x(run.to);
    if (previous !== null && previous.to === run.from && previous.rank !== rank) {
      parts.push(node('line', { class: 'riser', x1, x2: x1, y1: y(previous.rank), y2: y(rank) }));
    }
    parts.push(node('line', { class: `run run-${level.level}`, x1, x2: Math.max(x2, x1 + 1), y1: y(rank), y2: y(rank) }));
    if (level.relay) {
      parts.push(node('rect', { class: 'relay', x: x1, y: RELAY_Y, width: Math.max(x2 - x1, 1), height: 4 }));
    }
    previous = { to: run.to, rank };
  }
  parts.push(node('text', { class: 'axis', x: LEFT, y: AXIS_Y }, startLabel));
  parts.push(node('text', { class: 'axis', x: WIDTH - RIGHT, y: AXIS_Y, 'text-anchor': 'end' }, endLabel));
  svg.replaceChildren(...parts);
  svg.dataset.points = String(points.length);
  svg.setAttribute('aria-label', describe(label, summarize(points, { end, hold }), when));
}

/** The chart in words, for its accessible name and the line under it. */
export function describe(label, summary, when = 'now') {
  const now = summary.now
    ? `${summary.now.level} ${when}${summary.now.relay ? ', through the TURN relay' : ''}`
    : `no data ${when}`;
  const share = summary.share === null ? '' : `; fair or better ${Math.floor(summary.share * 100)}% of the time shown`;
  return `${label}: ${now}${share}.`;
}
