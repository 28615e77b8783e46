// The partner's room page: the check, the waiting room, the call; and the check-in the
// therapist sees: the checklist's answers (check_in) and the number they would call if video
// fails, confirmed or corrected (confirm_phone).

import { RoomPage } from './session.js';
import { $, announce } from './ui.js';

const CHECKLIST = {
  private_space: 'chk-private',
  headphones: 'chk-headphones',
  charged: 'chk-power',
  not_driving: 'chk-driving',
  moving_car: 'chk-moving',
};

const page = new RoomPage();
const sig = page.signaling;

/** @returns {import('./signaling.js').CheckInAnswers} */
function answers() {
  return Object.fromEntries(Object.entries(CHECKLIST).map(([key, id]) => [key, /** @type {HTMLInputElement} */ ($(id)).checked]));
}

function sendCheckIn() {
  $('park-first').hidden = !answers().moving_car;
  sig.checkIn(answers());
}

for (const id of Object.values(CHECKLIST)) $(id).addEventListener('change', sendCheckIn);
// Seated (in the waiting room or the call): the therapist gets the answers as they stand.
sig.on('waiting', sendCheckIn);
sig.on('welcome', sendCheckIn);

// ---- the number the therapist would call ----------------------------------------------------

const form = /** @type {HTMLFormElement} */ ($('phone-form'));
const input = /** @type {HTMLInputElement} */ ($('phone-input'));
const error = $('phone-error');
const status = $('phone-status');

function showError(text) {
  error.textContent = text;
  error.hidden = !text;
  input.setAttribute('aria-invalid', text ? 'true' : 'false');
}

document.getElementById('phone-yes')?.addEventListener('click', () => {
  if (sig.confirmPhone()) {
    $('phone-answers').hidden = true;
    status.textContent = 'Thank you. If the video stops working, your therapist will call that number.';
  }
});
document.getElementById('phone-change')?.addEventListener('click', () => {
  form.hidden = false;
  input.focus();
});
form.addEventListener('submit', (event) => {
  event.preventDefault();
  const number = input.value.trim();
  if (!number) {
    showError('Please type the number your therapist should call.');
    return;
  }
  showError('');
  if (!sig.confirmPhone(number)) showError('You are not connected right now. Please try again in a moment.');
});
sig.on('error', (m) => {
  if (m.ref === 'confirm_phone') {
    form.hidden = false;
    showError(m.message);
  }
});
sig.on('plan', (m) => {
  const hint = m.fallback.phone_hint;
  if (!hint) return;
  const shown = document.getElementById('phone-hint');
  if (shown) shown.textContent = hint;
  document.getElementById('phone-answers')?.setAttribute('hidden', '');
  $('phone-question').hidden = true; // the status below says it now
  form.hidden = true;
  input.value = '';
  status.textContent = `Saved. If the video stops working, your therapist will call you at ${hint}.`;
  announce(status.textContent);
});

page.start();
