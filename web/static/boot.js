// Loaded first, as a plain script: if one of the page's own scripts fails to load (the network
// dropped or changed while the page loaded: Wi-Fi to mobile data), nothing on the page would
// ever work and it would sit at "Checking your connection…". So the page reloads itself once;
// if the scripts fail again soon after, it says so in plain words, with a button to try again.
(function watchScriptLoads() {
  const RELOADED_AT = 'telehealth.reloadedAfterFailedLoad';
  const RETRY_WITHIN_MS = 60000;
  let handled = false;

  function loadedAgainRecently() {
    try {
      const at = Number(sessionStorage.getItem(RELOADED_AT));
      return Number.isFinite(at) && Date.now() - at < RETRY_WITHIN_MS;
    } catch (error) {
      return true; // no storage: never risk reloading in a loop
    }
  }

  function explain() {
    const notice = document.getElementById('load-failed');
    if (!notice) return;
    notice.hidden = false;
    document.getElementById('load-failed-reload')?.addEventListener('click', () => location.reload());
  }

  addEventListener('error', (event) => {
    const node = event.target;
    const ours = node instanceof HTMLScriptElement
      || (node instanceof HTMLLinkElement && node.rel === 'modulepreload');
    if (!ours || handled) return;
    handled = true;
    if (loadedAgainRecently()) {
      if (document.readyState === 'loading') addEventListener('DOMContentLoaded', explain);
      else explain();
      return;
    }
    try {
      sessionStorage.setItem(RELOADED_AT, String(Date.now()));
    } catch (error) {
      // Checked again by loadedAgainRecently, which then never reloads.
    }
    // A moment for the network to settle.
    setTimeout(() => location.reload(), 1500);
  }, true);
}());
