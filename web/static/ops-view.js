// Shared pieces of the ops pages: formatting, level badges and the disruption ledger.
// Builds DOM nodes with ui.js's el() (never HTML strings), so nothing from the server is
// parsed as markup; the ledger's rows are grouped by ledger.js, as on the therapist's page.

import { disruptions } from './ledger.js';
import { el } from './ui.js';

const pad = (n) => String(n).padStart(2, '0');

/** "14:05:09" (UTC), or with the date: "2026-11-20 14:05". */
export function utc(t, { date = false } = {}) {
  const d = new Date(t * 1000);
  const clock = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  if (date) return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${clock}`;
  return `${clock}:${pad(d.getUTCSeconds())}`;
}

export function minutes(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  return `${Math.round(seconds / 60)} min`;
}

/** A share as a whole percent, rounded down so that 100% means every moment. */
export function share(value) {
  return value === null || value === undefined ? '—' : `${Math.floor(value * 100)}%`;
}

export function levelBadge(level) {
  return el('span', { class: `level level-${level ?? 'none'}` }, level ?? 'no data');
}

const CAUSES = {
  own_network: 'their own network',
  link: 'the link between two people',
  everyone: 'every link',
  unknown: 'not known',
  server_restart: 'server restart',
};

const STEPS = {
  lower_video: 'video lowered',
  audio_only: 'audio only',
  restore_video: 'video restored',
  dropped: 'dropped',
  ice_restart: 'ICE restart',
  fresh_connection: 'fresh connection',
  page_rejoin: 'page rejoin',
  back: 'back',
  phone: 'moved to the phone',
  return_to_video: 'back to video',
  hold: 'on hold',
  resume: 'resumed',
};

const OUTCOMES = {
  recovered: 'recovered',
  left: 'left',
  ended_on_phone: 'ended on the phone',
  session_ended: 'session ended',
};

/**
 * The disruption ledger as a table, or a sentence when there is none.
 * @param {HTMLElement} container @param {Array<object>} rows @param {Record<string, string>} labels
 */
export function renderLedger(container, rows, labels) {
  const list = disruptions(/** @type {import('./signaling.js').LedgerRow[]} */ (rows), (id) => labels[id] ?? 'Someone');
  if (!list.length) {
    container.replaceChildren(el('p', { class: 'muted ledger-empty' }, 'No disruptions.'));
    return;
  }
  const head = el('tr', {}, ...['#', 'Who', 'Cause', 'Started', 'Steps', 'Outcome'].map((h) => el('th', { scope: 'col' }, h)));
  const body = list.map((d) => {
    const steps = d.steps.map((s) => `${STEPS[s.step] ?? s.step}${s.outcome ? ` (${s.outcome})` : ''} at ${utc(s.at)}`).join('; ');
    const outcome = d.outcome ? `${OUTCOMES[d.outcome] ?? d.outcome} at ${utc(d.endedAt)}` : 'ongoing';
    return el('tr', { 'data-disruption': String(d.id), 'data-open': String(!d.outcome) },
      el('td', {}, String(d.id + 1)),
      el('td', {}, d.name, ' ', el('code', {}, d.person)),
      el('td', {}, CAUSES[d.cause] ?? d.cause),
      el('td', {}, utc(d.startedAt)),
      el('td', {}, steps || '—'),
      el('td', { class: 'ledger-outcome' }, outcome));
  });
  const table = el('table', { class: 'ops-table ledger' },
    el('caption', { class: 'visually-hidden' }, 'Disruptions, one row each, with the steps taken'),
    el('thead', {}, head), el('tbody', {}, ...body));
  container.replaceChildren(table);
}
