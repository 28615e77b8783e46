// The live ops dashboard: one Server-Sent Events stream (/ops/live) brings a snapshot each
// second; this module keeps each room's recent quality samples and redraws its cards.
// Rooms and people appear by role and opaque id only: the server never sends a name.

import { createChart, drawChart, NO_DATA } from './ops-chart.js';
import { levelBadge, minutes, renderLedger, share, utc } from './ops-view.js';
import { el } from './ui.js';

const roomsBox = document.getElementById('rooms');
const noRooms = document.getElementById('no-rooms');
const status = document.getElementById('live-status');
const pastTable = /** @type {HTMLTableElement} */ (document.getElementById('past'));
const noPast = document.getElementById('no-past');
const WINDOW_S = Number(roomsBox.dataset.window) || 600;
const SAMPLE_S = 1;

/** room id -> {times: number[], links: Map<string, number[]>} (codes aligned with times) */
const series = new Map();

const STATES = { waiting: 'waiting to be let in', in_call: 'in the call', reconnecting: 'reconnecting', absent: 'not here' };
const FLOW = {
  connected: 'connected', degraded: 'weak connection', reconnecting: 'reconnecting',
  phone: 'on the phone', left: 'left',
};
const VIDEO = { full: 'full video', lowered: 'lowered video', audio_only: 'audio only' };

function setStatus(state, text) {
  if (status.dataset.state === state && status.textContent === text) return;
  status.dataset.state = state;
  status.textContent = text;
}

/** Append the samples of one event, skipping any already held (a reconnected stream resends). */
function append(room) {
  let held = series.get(room.id);
  if (!held) {
    held = { times: [], links: new Map() };
    series.set(room.id, held);
  }
  const { times, links } = room.samples;
  const last = held.times.length ? held.times[held.times.length - 1] : -Infinity;
  times.forEach((t, i) => {
    if (t <= last) return;
    held.times.push(t);
    for (const key of new Set([...held.links.keys(), ...Object.keys(links)])) {
      if (!held.links.has(key)) held.links.set(key, new Array(held.times.length - 1).fill(NO_DATA));
      held.links.get(key).push(links[key]?.[i] ?? NO_DATA);
    }
  });
  // Keep the window; forget links with nothing left in it.
  const cutoff = held.times.length ? held.times[held.times.length - 1] - WINDOW_S : -Infinity;
  let drop = 0;
  while (drop < held.times.length && held.times[drop] < cutoff) drop += 1;
  if (drop) held.times.splice(0, drop);
  for (const [key, codes] of held.links) {
    if (drop) codes.splice(0, drop);
    if (codes.every((code) => code === NO_DATA)) held.links.delete(key);
  }
  return held;
}

function roomCard(id) {
  const existing = roomsBox.querySelector(`[data-room="${CSS.escape(id)}"]`);
  if (existing) return existing;
  const titleId = `room-${id}-title`;
  const card = el('article', { class: 'card ops-room', 'data-room': id, 'aria-labelledby': titleId },
    el('div', { class: 'ops-room-head' },
      el('h3', { id: titleId }, 'Room ', el('code', {}, id)),
      el('p', { class: 'usable' }, el('span', { class: 'usable-value' }, '—'), ' usable')),
    el('p', { class: 'ops-room-meta' }),
    el('h4', {}, 'People'),
    el('ul', { class: 'ops-people' }),
    el('h4', {}, 'Links'),
    el('div', { class: 'ops-links' }),
    el('h4', {}, 'Disruptions'),
    el('div', { class: 'ops-ledger' }));
  roomsBox.append(card);
  return card;
}

function personLine(person) {
  const words = [STATES[person.state] ?? person.state];
  const flow = FLOW[person.flow] ?? person.flow;
  if (person.flow && person.flow !== 'connected' && !words.includes(flow)) words.push(flow);
  if (person.video && person.video !== 'full') words.push(VIDEO[person.video] ?? person.video);
  return el('li', { 'data-person': person.id, 'data-role': person.role, 'data-state': person.state },
    el('span', { class: 'person-label' }, person.label), ' ', el('code', {}, person.id), ': ',
    el('span', { class: 'person-state' }, words.join(', ')), ' ', levelBadge(person.level));
}

function drawLinks(card, room, held, now) {
  const box = card.querySelector('.ops-links');
  const current = new Map(room.links.map((link) => [link.key, link]));
  // The server orders the labels (the therapist's links first); keep that order.
  const keys = [...Object.keys(room.link_labels), ...held.links.keys()]
    .filter((key, i, all) => held.links.has(key) && all.indexOf(key) === i);
  for (const figure of box.querySelectorAll('figure')) {
    if (!held.links.has(figure.dataset.link)) figure.remove();
  }
  for (const key of keys) {
    let figure = box.querySelector(`figure[data-link="${CSS.escape(key)}"]`);
    if (!figure) {
      figure = el('figure', { class: 'ops-link', 'data-link': key },
        el('figcaption', {}), createChart(), el('p', { class: 'chart-summary' }));
    }
    box.append(figure);
    const label = room.link_labels[key] ?? key;
    const link = current.get(key);
    const caption = [el('span', {}, label), levelBadge(link?.level ?? null)];
    if (link?.relay) caption.push(el('span', { class: 'relay-badge' }, 'via TURN relay'));
    figure.querySelector('figcaption').replaceChildren(...caption);
    const codes = held.links.get(key);
    const points = held.times.map((t, i) => [t, codes[i]]);
    const svg = figure.querySelector('svg');
    // The window, or the session so far if it is younger.
    const start = Math.max(now - WINDOW_S, room.started_at ?? now - WINDOW_S);
    drawChart(svg, points, {
      start, end: now, hold: SAMPLE_S * 1.5, label,
      startLabel: start > now - WINDOW_S ? `${utc(start)} (start)` : `${utc(start)}`, endLabel: `now (${utc(now)})`,
    });
    figure.querySelector('.chart-summary').textContent = svg.getAttribute('aria-label');
  }
  if (!keys.length && !box.querySelector('p')) {
    box.replaceChildren(el('p', { class: 'muted' }, 'No link yet: nobody is connected to anyone.'));
  } else if (keys.length) {
    box.querySelector(':scope > p')?.remove();
  }
}

function renderRoom(room, now) {
  const held = append(room);
  const card = roomCard(room.id);
  card.querySelector('.usable-value').textContent = share(room.usable);
  /** @type {HTMLElement} */ (card.querySelector('.usable-value')).dataset.usable = room.usable ?? '';
  const meta = [room.started_at ? `Started ${utc(room.started_at)} UTC` : 'Not started yet',
    `in session ${minutes(room.session_s)}`];
  if (room.locked) meta.push('locked');
  if (!room.opened) meta.push('waiting for the therapist');
  card.querySelector('.ops-room-meta').textContent = meta.join(' · ');
  card.querySelector('.ops-people').replaceChildren(...room.people.map(personLine));
  drawLinks(card, room, held, now);
  renderLedger(card.querySelector('.ops-ledger'), room.ledger, room.people_labels);
}

function renderPast(rows) {
  noPast.hidden = rows.length > 0;
  pastTable.hidden = rows.length === 0;
  pastTable.tBodies[0].replaceChildren(...rows.map((row) => el('tr', { 'data-room': row.id },
    el('td', {}, el('a', { href: `/ops/sessions/${encodeURIComponent(row.id)}` }, row.id)),
    el('td', {}, utc(row.ended_at, { date: true })),
    el('td', {}, minutes(row.session_s)),
    el('td', {}, share(row.usable)),
    el('td', {}, String(row.disruptions)))));
}

function render(snapshot) {
  const live = new Set(snapshot.rooms.map((room) => room.id));
  for (const card of roomsBox.querySelectorAll('.ops-room')) {
    if (!(card instanceof HTMLElement)) continue;
    if (!live.has(card.dataset.room)) {
      card.remove();
      series.delete(card.dataset.room);
    }
  }
  for (const room of snapshot.rooms) renderRoom(room, snapshot.now);
  noRooms.hidden = snapshot.rooms.length > 0;
  if (snapshot.past) renderPast(snapshot.past);
}

const source = new EventSource('/ops/live');
source.addEventListener('open', () => setStatus('live', 'Live'));
source.addEventListener('message', (event) => {
  setStatus('live', 'Live');
  render(JSON.parse(event.data));
});
source.addEventListener('signed_out', () => {
  source.close();
  setStatus('down', 'Signed out. Reload the page to sign in again.');
});
source.addEventListener('error', () => {
  if (source.readyState === EventSource.CLOSED) setStatus('down', 'Not updating. Reload the page.');
  else setStatus('connecting', 'Reconnecting…');
});
