// The therapist's room page: the partner page plus the waiting room list with an Admit
// button per person, mute and remove per participant, lock, and ending the session.

import { RoomPage } from './session.js';
import { $, el, announce, confirmDialog } from './ui.js';
import { chimeWav } from './devices.js';

/** @type {RoomPage} */
let page;

function adminActions(tile) {
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
  const actions = el('div', { className: 'tile-actions' }, mute, remove);
  // Keep the labels right if the name arrives later.
  new MutationObserver(() => {
    mute.textContent = `Mute ${tile.name}`;
    remove.textContent = `Remove ${tile.name}`;
  }).observe(tile.nameNode, { childList: true, characterData: true, subtree: true });
  return actions;
}

/**
 * The waiting room list, updated from each `lobby` message. Rows stay in place while their
 * person waits, so keyboard focus on an Admit button is not lost when someone else arrives.
 */
function showLobby(waiting) {
  const list = $('lobby-list');
  const rows = new Map([...list.children].map((li) => [li.dataset.person, li]));
  const ids = new Set(waiting.map((p) => p.id));
  let focusLost = false;
  let arrived = false;
  for (const [id, li] of rows) {
    if (ids.has(id)) continue;
    focusLost = focusLost || li.contains(document.activeElement);
    li.remove();
  }
  for (const person of waiting) {
    if (rows.has(person.id)) continue;
    list.append(el('li', { 'data-person': person.id },
      el('span', { text: person.name }),
      el('button', {
        type: 'button', className: 'button primary small', text: `Admit ${person.name}`,
        onclick: (event) => {
          event.currentTarget.disabled = true;
          event.currentTarget.textContent = `Admitting ${person.name}…`;
          page.signaling.admit(person.id);
        },
      })));
    announce(`${person.name} is waiting to join.`);
    arrived = true;
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
});

page.signaling.on('lobby', (m) => showLobby(m.waiting));
page.signaling.on('room', (m) => {
  showLock(m.room.locked);
  announce(m.room.locked ? 'The room is locked. No one else can join.' : 'The room is unlocked.');
});
page.signaling.on('error', (m) => {
  if (m.ref === 'admit' || m.ref === 'remove' || m.ref === 'mute') announce(m.message);
});

$('toggle-lock').addEventListener('click', () => {
  page.signaling.lock(!roomLocked);
});
$('end-session').addEventListener('click', async () => {
  const sure = await confirmDialog({
    title: 'End the session for everyone?',
    text: 'Everyone will be disconnected and the links will stop working.',
    confirm: 'End session',
  });
  if (sure) page.signaling.end();
});

page.start();
