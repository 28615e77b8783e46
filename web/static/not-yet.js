// A link opened before its window: the times in the reader's own zone, and the page reloads
// itself when the link opens (if that is today), so someone who waits on it gets the check.

import { localizeTimes } from './ui.js';

localizeTimes();
const opensMs = Number(document.getElementById('main').dataset.opensMs);
const waitMs = opensMs - Date.now();
if (Number.isFinite(waitMs) && waitMs < 86400000) {
  setTimeout(() => location.reload(), Math.max(0, waitMs) + 1000);
}
// Keep the "(in N minutes)" current while the page is open.
setInterval(() => localizeTimes(), 30000);
