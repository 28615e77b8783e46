// The session's disruption ledger for the therapist (docs/fallback.md, section 6): every
// disruption, who, why, each step taken and how it went, with clock times; downloadable as
// CSV and JSON for notes and billing.
//
// The server's rows hold ids only. Names are added here, on the therapist's own page, for
// display and for the therapist's own download; the server's copy never gets them.

import { el } from './ui.js';

/** Causes in words (fallback.scoring.Cause). */
export const CAUSE_WORDS = Object.freeze({
  own_network: 'their own internet connection',
  link: 'the connection between two people',
  everyone: "everyone's connection (or the service)",
  unknown: 'not known',
  server_restart: 'server restart (the service, not anyone\'s connection)',
  device_busy: 'their computer was busy (not their connection)',
  device_asleep: 'their page was paused or their screen locked (not their connection)',
});

/** Steps in words (fallback.ledger.Step). */
export const STEP_WORDS = Object.freeze({
  lower_video: 'Video quality lowered',
  audio_only: 'Video paused to keep the sound clear',
  restore_video: 'Video back on',
  dropped: 'Connection dropped',
  ice_restart: 'Reconnecting: network path renewed',
  fresh_connection: 'Reconnecting: new connection',
  page_rejoin: 'Reconnecting: page rejoined',
  back: 'Back in the session',
  phone: 'Moved to the phone',
  return_to_video: 'Back on video from the phone',
  hold: 'Session put on hold',
  resume: 'Session resumed',
  device: 'Their device slowed the call',
});

const STEP_OUTCOME_WORDS = Object.freeze({
  ok: 'worked',
  failed: 'did not work',
  window: 'the rejoin window ended',
  therapist: 'you switched',
});

/** How a disruption ended (fallback.ledger.Outcome). */
export const OUTCOME_WORDS = Object.freeze({
  recovered: 'Recovered',
  left: 'Left the session',
  ended_on_phone: 'Ended on the phone',
  session_ended: 'Still going when the session ended',
});

/** A clock time, in the reader's own zone, from the server's seconds since the epoch. */
export function clockTime(seconds) {
  if (seconds === null || seconds === undefined) return '';
  return new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit', second: '2-digit' })
    .format(new Date(seconds * 1000));
}

function isoTime(seconds) {
  return seconds === null || seconds === undefined ? '' : new Date(seconds * 1000).toISOString();
}

/**
 * The rows grouped by disruption, with names and words.
 * @param {import('./signaling.js').LedgerRow[]} rows
 * @param {(personId: string) => string} nameOf
 */
export function disruptions(rows, nameOf) {
  const byId = new Map();
  for (const row of rows) {
    let entry = byId.get(row.disruption);
    if (!entry) {
      entry = {
        id: row.disruption, person: row.person, name: nameOf(row.person), cause: row.cause,
        startedAt: row.started_at, endedAt: row.ended_at ?? null, outcome: row.outcome ?? null, steps: [],
      };
      byId.set(row.disruption, entry);
    }
    if (row.step) entry.steps.push({ step: row.step, at: row.step_at ?? null, outcome: row.step_outcome ?? null });
  }
  return [...byId.values()];
}

/** One flat record per step, as downloaded: ids, the name (ours only), ISO and clock times. */
function records(rows, nameOf) {
  return rows.map((row) => ({
    disruption: row.disruption,
    person: row.person,
    name: nameOf(row.person),
    cause: row.cause,
    started_at: isoTime(row.started_at),
    ended_at: isoTime(row.ended_at),
    outcome: row.outcome ?? '',
    step: row.step ?? '',
    step_at: isoTime(row.step_at),
    step_clock: clockTime(row.step_at),
    step_outcome: row.step_outcome ?? '',
  }));
}

const CSV_COLUMNS = ['disruption', 'person', 'name', 'cause', 'started_at', 'ended_at', 'outcome',
  'step', 'step_at', 'step_clock', 'step_outcome'];

/** A CSV cell: quoted when needed, and never a formula when opened in a spreadsheet. */
function csvCell(value) {
  let text = String(value ?? '');
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function ledgerCsv(rows, nameOf) {
  const lines = [CSV_COLUMNS.join(',')];
  for (const record of records(rows, nameOf)) lines.push(CSV_COLUMNS.map((c) => csvCell(record[c])).join(','));
  return `${lines.join('\r\n')}\r\n`;
}

export function ledgerJson(rows, nameOf) {
  return JSON.stringify({ disruptions: records(rows, nameOf) }, null, 2);
}

function download(filename, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el('a', { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * Draw the ledger into `container`: the two download buttons, then one section per
 * disruption with its steps.
 * @param {HTMLElement} container
 * @param {import('./signaling.js').LedgerRow[]} rows
 * @param {(personId: string) => string} nameOf
 */
export function renderLedger(container, rows, nameOf) {
  const list = disruptions(rows, nameOf);
  const stamp = new Date().toISOString().slice(0, 16).replace(/[:T]/g, '-');
  // The downloads come first, so a long log never hides them.
  /** @type {HTMLElement[]} */
  const parts = [el('div', { className: 'ledger-downloads' },
    el('button', {
      type: 'button', className: 'button secondary', text: 'Download CSV',
      onclick: () => download(`session-log-${stamp}.csv`, 'text/csv', ledgerCsv(rows, nameOf)),
    }),
    el('button', {
      type: 'button', className: 'button secondary', text: 'Download JSON',
      onclick: () => download(`session-log-${stamp}.json`, 'application/json', ledgerJson(rows, nameOf)),
    }))];
  if (list.length === 0) {
    parts.push(el('p', { text: 'No interruptions so far in this session.' }));
  }
  for (const d of list) {
    const when = d.endedAt ? `${clockTime(d.startedAt)} to ${clockTime(d.endedAt)}` : `since ${clockTime(d.startedAt)}`;
    const outcome = d.outcome ? OUTCOME_WORDS[d.outcome] ?? d.outcome : 'Still going';
    const table = el('table', { className: 'ledger-steps' },
      el('caption', { text: `${d.name}, ${when}. Cause: ${CAUSE_WORDS[d.cause] ?? d.cause}. ${outcome}.` }),
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col', text: 'Time' }),
        el('th', { scope: 'col', text: 'What happened' }),
        el('th', { scope: 'col', text: 'Result' }))),
      el('tbody', {}, ...d.steps.map((s) => el('tr', {},
        el('td', { text: clockTime(s.at) }),
        el('td', { text: STEP_WORDS[s.step] ?? s.step }),
        el('td', { text: s.outcome ? STEP_OUTCOME_WORDS[s.outcome] ?? s.outcome : '' })))));
    parts.push(el('section', { className: 'ledger-entry', 'data-person': d.person }, table));
  }
  container.replaceChildren(...parts);
}
