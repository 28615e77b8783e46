// Small page helpers shared by the UI modules: building elements without HTML strings,
// announcing to screen readers, a confirmation dialog, and times in plain words.

/** @returns {HTMLElement} */
export function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing #${id}`);
  return node;
}

/** The element if the page has it (role-specific parts), else null. */
export function maybe(id) {
  return document.getElementById(id);
}

/**
 * Build an element. Text is always set as text, never parsed as HTML.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Object<string, any>} [props] attributes; `text`, `className`, `hidden`, `on*` handled specially
 * @param {...(Node|string)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'className') node.className = value;
    else if (key === 'hidden') node.hidden = Boolean(value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

/** Say something through the page's polite live region. */
export function announce(text) {
  const region = maybe('announcer');
  if (!region) return;
  // Clearing first makes screen readers repeat a message that is the same as the last one.
  region.textContent = '';
  setTimeout(() => { region.textContent = text; }, 50);
}

/**
 * Ask before something that cannot be undone. Resolves true when confirmed.
 * @param {{title: string, text: string, confirm: string, cancel?: string}} question
 */
export function confirmDialog({ title, text, confirm, cancel = 'Cancel' }) {
  const dialog = /** @type {HTMLDialogElement} */ ($('confirm-dialog'));
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  const ok = $('confirm-ok');
  const no = $('confirm-cancel');
  ok.textContent = confirm;
  no.textContent = cancel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.removeEventListener('click', yes);
      no.removeEventListener('click', nope);
      dialog.removeEventListener('cancel', nope);
      if (dialog.open) dialog.close();
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(answer);
    };
    const yes = () => done(true);
    const nope = (event) => { event?.preventDefault?.(); done(false); };
    ok.addEventListener('click', yes);
    no.addEventListener('click', nope);
    dialog.addEventListener('cancel', nope);
    dialog.showModal();
    no.focus(); // the safe choice has focus
  });
}

/**
 * A session time in the reader's own words and time zone: "today at 3:00 PM",
 * "tomorrow at 9:30 AM", "Tuesday, November 25 at 3:00 PM".
 */
export function describeTime(when, now = new Date()) {
  const clock = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' }).format(when);
  const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(when) - day(now)) / 86400000);
  let words;
  if (days === 0) words = `today at ${clock}`;
  else if (days === 1) words = `tomorrow at ${clock}`;
  else if (days === -1) words = `yesterday at ${clock}`;
  else {
    const date = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' }).format(when);
    words = `${date} at ${clock}`;
  }
  // Close to the time, how close says more than the clock.
  const minutes = Math.round((when.getTime() - now.getTime()) / 60000);
  if (minutes > 0 && minutes <= 90) words += ` (in ${minutes} minute${minutes === 1 ? '' : 's'})`;
  else if (minutes <= 0 && minutes > -90) words += minutes === 0 ? ' (now)' : ` (started ${-minutes} minute${minutes === -1 ? '' : 's'} ago)`;
  return words;
}

/**
 * How long until the session, for the check before it: "Your session starts at 3:00 PM, in
 * 22 minutes"; once it has begun, "Your session started at 3:00 PM".
 */
export function countdownText(startsMs, nowMs = Date.now()) {
  const clock = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' }).format(new Date(startsMs));
  const minutes = Math.ceil((startsMs - nowMs) / 60000);
  if (minutes <= 0) return `Your session started at ${clock}`;
  return `Your session starts at ${clock}, in ${minutes} minute${minutes === 1 ? '' : 's'}`;
}

/** Rewrite server-rendered times (in UTC) into the reader's time zone. */
export function localizeTimes(root = document) {
  for (const node of root.querySelectorAll('time[datetime]')) {
    const when = new Date(node.getAttribute('datetime'));
    if (!Number.isNaN(when.getTime())) node.textContent = describeTime(when);
  }
}

/** A one-click `tel:` link for a phone number, as fallback/notices.py tel_href makes it (RFC 3966). */
export function telHref(number) {
  const [main, ext = ''] = number.split(/\s*(?:ext\.?|x|#|,|;)\s*/i);
  const digits = (text) => text.replace(/\D/g, '');
  const plus = number.trim().startsWith('+') ? '+' : '';
  return `tel:${plus}${digits(main)}${digits(ext) ? `;ext=${digits(ext)}` : ''}`;
}
