// The console: copy buttons for links, the time zone for the login, and a confirmation
// before forms that cannot be undone. The pages work without it.

const zoneField = document.getElementById('timezone');
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
  button.hidden = false;
  button.addEventListener('click', async () => {
    const field = document.getElementById(button.dataset.copy);
    const done = await copy(field);
    const label = document.querySelector(`label[for="${field.id}"]`)?.textContent ?? 'Link';
    button.textContent = done ? 'Copied' : 'Copy';
    if (status) status.textContent = done ? `${label} copied.` : 'Could not copy. Select the link and copy it yourself.';
    setTimeout(() => { button.textContent = 'Copy'; }, 3000);
  });
}

for (const field of document.querySelectorAll('input.link-field')) {
  field.addEventListener('focus', () => field.select());
}

for (const form of document.querySelectorAll('form[data-confirm]')) {
  form.addEventListener('submit', (event) => {
    // The browser's own dialog: accessible everywhere and modal.
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
