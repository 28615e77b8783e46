// The console: copy buttons for links, the time zone for the login, and a confirmation
// before forms that cannot be undone. The pages work without it.

const zoneField = /** @type {HTMLInputElement|null} */ (document.getElementById('timezone'));
if (zoneField) {
  try {
    zoneField.value = Intl.DateTimeFormat().resolvedOptions().timeZone || '';
  } catch (error) {
    // The server falls back to UTC.
  }
}

const status = document.getElementById('copy-status');

async function copy(field) {
  try {
    await navigator.clipboard.writeText(field.value);
    return true;
  } catch (error) {
    // Older browsers, or no permission: select the text and use the old command.
    field.select();
    return document.execCommand('copy');
  }
}

for (const button of document.querySelectorAll('button[data-copy]')) {
  if (!(button instanceof HTMLButtonElement)) continue;
  button.hidden = false;
  button.addEventListener('click', async () => {
    const field = /** @type {HTMLInputElement} */ (document.getElementById(button.dataset.copy));
    const done = await copy(field);
    const label = document.querySelector(`label[for="${field.id}"]`)?.textContent ?? 'Link';
    button.textContent = done ? 'Copied' : 'Copy';
    if (status) status.textContent = done ? `${label} copied.` : 'Could not copy. Select the link and copy it yourself.';
    setTimeout(() => { button.textContent = 'Copy'; }, 3000);
  });
}

for (const field of document.querySelectorAll('input.link-field')) {
  if (!(field instanceof HTMLInputElement)) continue;
  field.addEventListener('focus', () => field.select());
}

for (const form of document.querySelectorAll('form[data-confirm]')) {
  if (!(form instanceof HTMLFormElement)) continue;
  form.addEventListener('submit', (event) => {
    // The browser's own dialog: accessible everywhere and modal.
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// Email states follow the server while any email of a room is still on its way: "sending…",
// then "sent 14:02", or "failed: mailbox unavailable — copy the link instead" with a way to
// send it again.
const POLL_MS = 2000;

function resendForm(roomId, personId, name) {
  const form = document.createElement('form');
  form.method = 'post';
  form.className = 'inline';
  form.action = `/console/rooms/${encodeURIComponent(roomId)}/people/${encodeURIComponent(personId)}/mail`;
  const csrf = document.createElement('input');
  csrf.type = 'hidden';
  csrf.name = 'csrf';
  csrf.value = document.querySelector('input[name="csrf"]') instanceof HTMLInputElement
    ? /** @type {HTMLInputElement} */ (document.querySelector('input[name="csrf"]')).value : '';
  const button = document.createElement('button');
  button.type = 'submit';
  button.className = 'button secondary small';
  button.textContent = `Send again to ${name}`;
  form.append(csrf, button);
  return form;
}

async function followMail(container) {
  const roomId = container.dataset.mailRoom;
  while (container.querySelector('[data-mail-state="queued"]')) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    let states;
    try {
      const response = await fetch(`/console/rooms/${encodeURIComponent(roomId)}/mail`, { credentials: 'same-origin' });
      if (!response.ok) return;
      states = await response.json();
    } catch (error) {
      continue; // the server is restarting: try again
    }
    for (const [personId, { state, text, resend }] of Object.entries(states)) {
      const line = container.querySelector(`[data-person="${CSS.escape(personId)}"]`);
      const node = line?.querySelector('.mail-state');
      if (!node || node.dataset.mailState === state && node.textContent === text) continue;
      node.dataset.mailState = state;
      node.textContent = text;
      const who = line.querySelector('.mail-who');
      if (resend && who && !line.querySelector('form')) {
        line.append(resendForm(roomId, personId, who.textContent.replace(/^Email to |:$/g, '')));
      }
    }
  }
}

for (const container of document.querySelectorAll('[data-mail-room]')) followMail(container);
