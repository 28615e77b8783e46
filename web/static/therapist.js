// The therapist's room page: the partner page plus the waiting room list with an Admit
// button per person, mute and remove per participant, lock, and ending the session; and the
// therapist's side of the fallback flow: "Switch to phone" while a partner is reconnecting,
// the call prompt with its `tel:` link and "Return to video", hold, and the session log.

import { RoomPage } from './session.js';
import { $, el, announce, confirmDialog } from './ui.js';
import { chimeWav } from './devices.js';
import { renderLedger } from './ledger.js';

/** @type {RoomPage} */
let page;

function adminActions(tile, statusActions) {
  const mute = el('button', {
    type: 'button', className: 'button small', text: `Mute ${tile.name}`,
    onclick: () => {
      page.signaling.mute(tile.peerId, 'audio');
      announce(`Asked ${tile.name}'s microphone to mute.`);
    },
  });
  const remove = el('button', {
    type: 'button', className: 'button small', text: `Remove ${tile.name}`,
    onclick: async () => {
      const sure = await confirmDialog({
        title: `Remove ${tile.name}?`,
        text: `${tile.name} will leave the session. Their link will let them back into the waiting room.`,
        confirm: 'Remove',
      });
      if (sure) page.signaling.remove(tile.peerId);
    },
  });
  // Offered while the partner is reconnecting: the therapist need not wait out the window.
  const toPhone = el('button', {
    type: 'button', className: 'button primary', text: `Switch ${tile.name} to phone`, hidden: true,
    onclick: () => {
      page.signaling.switchToPhone(tile.peerId);
      toPhone.hidden = true;
    },
  });
  phoneButtons.set(tile.peerId, toPhone);
  statusActions.append(toPhone);
  const actions = el('div', { className: 'tile-actions' }, mute, remove);
  // Keep the labels right if the name arrives later.
  new MutationObserver(() => {
    mute.textContent = `Mute ${tile.name}`;
    remove.textContent = `Remove ${tile.name}`;
    toPhone.textContent = `Switch ${tile.name} to phone`;
  }).observe(tile.nameNode, { childList: true, characterData: true, subtree: true });
  return actions;
}

/** @type {Map<string, HTMLButtonElement>} */
const phoneButtons = new Map();

// ---- the phone step ---------------------------------------------------------------------

/**
 * A call prompt: "Call <name> at <number>" as a one-click `tel:` link, kept until the partner
 * is back on video; "Return <name> to video" appears once they are back online.
 * @param {import('./signaling.js').CallPrompt} prompt
 */
function showCallPrompt(prompt) {
  const list = $('calls-list');
  let item = list.querySelector(`[data-person="${CSS.escape(prompt.callee)}"]`);
  if (!item) {
    item = el('li', { 'data-person': prompt.callee });
    list.append(item);
  }
  const back = el('button', {
    type: 'button', className: 'button small return-to-video', text: `Return ${prompt.name} to video`, hidden: true,
    onclick: () => page.signaling.returnToVideo(prompt.callee),
  });
  item.replaceChildren(
    prompt.href
      ? el('a', { className: 'button primary call-link', href: prompt.href, text: prompt.text })
      : el('span', { className: 'call-missing', text: prompt.text }),
    back);
  $('calls').hidden = false;
  syncFallback();
}

/** The therapist's controls follow the flow's view of each partner. */
function syncFallback() {
  const fallback = page.fallback;
  for (const [peerId, button] of phoneButtons) {
    const s = fallback.status(peerId);
    button.hidden = !(s.reconnecting && !s.phone);
  }
  const list = $('calls-list');
  for (const item of /** @type {HTMLElement[]} */ ([...list.children])) {
    const s = fallback.status(item.dataset.person);
    if (!s.phone) {
      item.remove();
      continue;
    }
    /** @type {HTMLElement} */ (item.querySelector('.return-to-video')).hidden = !s.backOnline;
  }
  $('calls').hidden = list.children.length === 0;

  // Hold: while one partner is gone and the other is here, so a one-sided conversation does
  // not run on by accident.
  const partners = [...page.mesh.links.values()].filter((l) => l.info.role === 'partner').map((l) => l.peerId);
  const gone = partners.filter((id) => fallback.status(id).gone);
  const here = partners.filter((id) => !fallback.status(id).gone);
  const held = [...fallback.statuses.values()].some((s) => s.heldFor);
  const hold = $('toggle-hold');
  hold.hidden = !held && !(gone.length === 1 && here.length === 1);
  hold.textContent = held ? 'Resume session' : 'Hold session';
  hold.classList.toggle('off', held);
}

// ---- the session log ----------------------------------------------------------------------

/** @type {import('./signaling.js').LedgerRow[]|null} */
let ledgerRows = null;
let ledgerWanted = false;
let ledgerArrived = null;
let ledgerAsk = null;

function nameOf(personId) {
  const me = page.signaling.me;
  return me && personId === me.id ? me.name : page.names.get(personId) || 'Someone';
}

/** Ask for the ledger again a moment after the flow took a step, so the end never misses one. */
function refreshLedgerSoon() {
  clearTimeout(ledgerAsk);
  ledgerAsk = setTimeout(() => page.signaling.getLedger(), 500);
}

function ledgerReceived(rows) {
  ledgerRows = rows;
  ledgerArrived?.();
  const dialog = /** @type {HTMLDialogElement} */ ($('ledger-dialog'));
  if (ledgerWanted || dialog.open) {
    renderLedger($('ledger-body'), rows, nameOf);
    if (!dialog.open) dialog.showModal();
    ledgerWanted = false;
  }
}

/** Before ending: the latest ledger, waiting a moment for it (never holding up the end). */
function fetchLedger(timeoutMs) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    ledgerArrived = () => {
      clearTimeout(timer);
      ledgerArrived = null;
      resolve();
    };
    if (!page.signaling.getLedger()) resolve();
  });
}

function showEndedLedger(reason) {
  if (reason !== 'room_ended' || ledgerRows === null) return;
  renderLedger($('ended-ledger-body'), ledgerRows, nameOf);
  $('ended-ledger').hidden = false;
}

/** ✓ or — per answer, read out as words. */
const CHECKS = [['private_space', 'private space'], ['headphones', 'headphones'], ['charged', 'charged'], ['not_driving', 'not driving']];

/**
 * A waiting partner's check-in in one line: "Sam: private space ✓, headphones —, charged ✓,
 * not driving ✓", then a moving car and whether they confirmed their number.
 * @param {import('./signaling.js').WaitingPerson} person
 * @returns {{text: string, spoken: string, warn: boolean}}
 */
function checkInLine(person) {
  const a = person.checkin;
  const parts = [];
  const spoken = [];
  if (!a) {
    parts.push('has not answered the checklist yet');
    spoken.push(parts[0]);
  } else {
    for (const [key, words] of CHECKS) {
      parts.push(`${words} ${a[key] ? '✓' : '—'}`);
      spoken.push(`${words} ${a[key] ? 'yes' : 'no'}`);
    }
  }
  let text = `${person.name}: ${parts.join(', ')}`;
  let said = `${person.name}: ${spoken.join(', ')}`;
  if (a?.moving_car) {
    text += '. In a moving car: asked to park first';
    said += '. In a moving car: asked to park first';
  }
  const phone = { confirmed: '. Phone number confirmed', corrected: '. Gave a new phone number' }[person.phone] ?? '';
  return { text: text + phone, spoken: said + phone, warn: Boolean(a?.moving_car) };
}

/**
 * The waiting room list, updated from each `lobby` message. Rows stay in place while their
 * person waits, so keyboard focus on an Admit button is not lost when someone else arrives;
 * their check-in line follows their answers.
 */
function showLobby(waiting) {
  const list = $('lobby-list');
  const rows = new Map(/** @type {HTMLElement[]} */ ([...list.children]).map((li) => [li.dataset.person, li]));
  const ids = new Set(waiting.map((p) => p.id));
  let focusLost = false;
  let arrived = false;
  for (const [id, li] of rows) {
    if (ids.has(id)) continue;
    focusLost = focusLost || li.contains(document.activeElement);
    li.remove();
  }
  for (const person of waiting) {
    let row = rows.get(person.id);
    if (!row) {
      row = el('li', { 'data-person': person.id },
        el('p', { className: 'lobby-checkin' }),
        el('button', {
          type: 'button', className: 'button primary small', text: `Admit ${person.name}`,
          onclick: (event) => {
            event.currentTarget.disabled = true;
            event.currentTarget.textContent = `Admitting ${person.name}…`;
            page.signaling.admit(person.id);
          },
        }));
      list.append(row);
      announce(`${person.name} is waiting to join.`);
      arrived = true;
    }
    const line = checkInLine(person);
    const node = row.querySelector('.lobby-checkin');
    if (node.textContent !== line.text) {
      node.textContent = line.text;
      node.setAttribute('aria-label', line.spoken);
      node.classList.toggle('warn', line.warn);
      if (line.warn && !arrived) announce(`${person.name} is in a moving car and was asked to park first.`);
    }
  }
  $('lobby-empty').hidden = waiting.length > 0;
  // A background tab shows the count in its title; a soft chime says someone arrived.
  document.title = document.title.replace(/^\(\d+\) /, '');
  if (waiting.length) document.title = `(${waiting.length}) ${document.title}`;
  if (arrived) chime();
  if (focusLost) (list.querySelector('button') ?? $('lobby-title')).focus();
}

let roomLocked = false;

function chime() {
  const url = URL.createObjectURL(chimeWav());
  const audio = new Audio(url);
  audio.volume = 0.5;
  if (page.media.speaker && audio.setSinkId) audio.setSinkId(page.media.speaker).catch(() => {});
  audio.addEventListener('ended', () => URL.revokeObjectURL(url), { once: true });
  audio.play().catch(() => URL.revokeObjectURL(url));
}

function showLock(locked) {
  roomLocked = locked;
  const button = $('toggle-lock');
  button.textContent = locked ? 'Unlock room' : 'Lock room';
  button.classList.toggle('off', locked);
}

page = new RoomPage({
  adminActions,
  onWelcome: (welcome) => showLock(welcome.room.locked),
  onEnded: showEndedLedger,
});
page.fallback.onChange(() => syncFallback());
page.signaling.on('call_prompt', (m) => showCallPrompt(m));
page.signaling.on('notice', () => refreshLedgerSoon());
page.signaling.on('ledger', (m) => ledgerReceived(m.rows));

page.signaling.on('lobby', (m) => showLobby(m.waiting));
page.signaling.on('room', (m) => {
  showLock(m.room.locked);
  announce(m.room.locked ? 'The room is locked. No one else can join.' : 'The room is unlocked.');
});
page.signaling.on('error', (m) => {
  if (['admit', 'remove', 'mute', 'switch_to_phone', 'return_to_video', 'hold', 'resume'].includes(m.ref)) {
    announce(m.message);
  }
});

$('toggle-lock').addEventListener('click', () => {
  page.signaling.lock(!roomLocked);
});
$('toggle-hold').addEventListener('click', () => {
  const held = [...page.fallback.statuses.values()].some((s) => s.heldFor);
  if (held) page.signaling.resume();
  else page.signaling.hold();
});
$('open-ledger').addEventListener('click', () => {
  ledgerWanted = true;
  if (ledgerRows !== null) renderLedger($('ledger-body'), ledgerRows, nameOf);
  if (!page.signaling.getLedger() && ledgerRows !== null) ledgerReceived(ledgerRows);
});
$('ledger-close').addEventListener('click', () => /** @type {HTMLDialogElement} */ ($('ledger-dialog')).close());
$('end-session').addEventListener('click', async () => {
  const sure = await confirmDialog({
    title: 'End the session for everyone?',
    text: 'Everyone will be disconnected and the links will stop working.',
    confirm: 'End session',
  });
  if (!sure) return;
  await fetchLedger(1500);
  page.signaling.end();
});

page.start();
