/* frustration-signals browser collector: ES2017, no dependencies, one script tag.
 * Click metadata only: never page text, never the value of text inputs. */
(() => {
  'use strict';
  const w = window, d = document;
  if (w.frustration) return;
  const CONTROL = 'button,a,input,select,textarea,summary,label,[onclick],' +
    'button link tab menuitem option checkbox radio switch slider spinbutton combobox'
      .split(' ').map((r) => `[role=${r}]`);
  const IMPLICIT = { button: 'button', submit: 'button', reset: 'button', image: 'button',
    checkbox: 'checkbox', radio: 'radio', range: 'slider', number: 'spinbutton' };
  const me = d.currentScript || d.querySelector('script[src*="collector.js"]') || {};
  const cfg = Object.assign({}, me.dataset, w.frustrationCollector);
  const endpoint = new URL(cfg.endpoint || '/v1/events', me.src || location.href).href;
  const key = cfg.apiKey;
  let user = cfg.userId, queue = [], timer = 0;
  const retried = new WeakSet();
  const uuid = () => (crypto.randomUUID ? crypto.randomUUID() // only in secure contexts
    : '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (n) =>
      (n ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (n / 4)))).toString(16)));
  let session = cfg.sessionId;
  try {
    session = session || sessionStorage.getItem('frustration.sid') || uuid();
    sessionStorage.setItem('frustration.sid', session);
  } catch (e) { session = session || uuid(); }
  const esc = (s) => (w.CSS && CSS.escape ? CSS.escape(s) : s.replace(/[^\w-]/g, '\\$&'));
  const clip = (s) => (s || '').replace(/\s+/g, ' ').trim().slice(0, 64) || undefined;

  // #id, [data-testid], else a short "tag.class:nth-of-type" path up to an anchor (<= 200 chars).
  function selector(el) {
    let sel = '';
    for (let n = el, depth = 0; n && n.nodeType === 1 && depth < 6; n = n.parentElement, depth++) {
      const tid = n.getAttribute('data-testid');
      let part = n.id ? '#' + esc(n.id) : tid ? `[data-testid="${tid.replace(/["\\]/g, '\\$&')}"]` : '';
      if (!part) {
        const cls = typeof n.className === 'string' && n.className.trim().split(/\s+/)[0];
        const same = [...(n.parentElement || d).children].filter((s) => s.localName === n.localName);
        part = n.localName + (cls ? '.' + esc(cls) : '') +
          (same.length > 1 ? `:nth-of-type(${same.indexOf(n) + 1})` : '');
      }
      const next = sel ? `${part} > ${sel}` : part;
      if (next.length > 200) return sel || next.slice(0, 200);
      sel = next;
      if (part[0] === '#' || part[0] === '[' || n.localName === 'body') break;
    }
    return sel;
  }

  function onClick(e) {
    try {
      const t = e.target;
      if (!t || t.nodeType !== 1 || t.closest('[data-frustration-ignore]')) return;
      const el = t.closest(CONTROL) || t, tag = el.localName;
      if (tag === 'label' && el.control) return; // the browser repeats the click on its control
      const type = tag === 'input' ? el.type : undefined;
      const explicit = (el.getAttribute('role') || '').trim().split(' ')[0];
      const role = explicit ||
        (tag === 'button' ? 'button' : tag === 'a' && el.href ? 'link' : IMPLICIT[type]);
      // The control's own label only: aria-label, else the text of button / a /
      // [role=button|link|tab|menuitem], else the value of input[type=button|submit].
      const label = clip(el.getAttribute('aria-label')) || (tag === 'input'
        ? (type === 'button' || type === 'submit' ? clip(el.value) : undefined)
        : tag === 'button' || tag === 'a' || /^(button|link|tab|menuitem)$/.test(explicit)
          ? clip(el.innerText) : undefined);
      queue.push({ type: 'click', user_id: user, session_id: session, event_id: uuid(), ts: Date.now(),
        target: selector(el), x: Math.round(e.pageX), y: Math.round(e.pageY), page: location.pathname,
        element: tag, label, role, detail: e.detail, input_type: type });
      if (queue.length > 500) queue.splice(0, queue.length - 500);
      if (queue.length >= 50) flush(); else schedule();
    } catch (err) { /* never break the page */ }
  }
  function schedule() {
    if (!timer && user) timer = setTimeout(() => { timer = 0; flush(); }, 2000);
  }
  function take() {
    const batch = queue.splice(0, 50);
    batch.forEach((ev) => { ev.user_id = ev.user_id || user; });
    return batch;
  }
  function retry(batch) { // each event is retried once, the queue is capped at 500
    const again = batch.filter((ev) => !retried.has(ev));
    again.forEach((ev) => retried.add(ev));
    queue = again.concat(queue).slice(-500);
    schedule();
  }
  function flush() {
    try {
      while (user && queue.length) {
        const batch = take(), headers = { 'Content-Type': 'application/json' };
        if (key) headers.Authorization = 'Bearer ' + key;
        const body = JSON.stringify(batch);
        fetch(endpoint, { method: 'POST', body, headers, keepalive: true, credentials: 'omit' })
          .then((r) => {
            // Read the answer: Chromium counts an unread keepalive request (answered no-store)
            // against its 64 KB in-flight limit until the page lets go of it, and then fails
            // every later fetch of the page ("Failed to fetch").
            r.arrayBuffer().catch(() => {});
            if (r.status >= 500 || r.status === 408 || r.status === 429) retry(batch);
          })
          .catch(() => retry(batch));
      }
    } catch (err) { /* never break the page */ }
  }
  function beacon() {
    try {
      const u = new URL(endpoint);
      if (key) u.searchParams.set('api_key', key);
      while (user && queue.length) {
        const batch = take();
        const blob = new Blob([JSON.stringify(batch)], { type: 'application/json' });
        if (!navigator.sendBeacon(u, blob)) { queue = batch.concat(queue); return; } // e.g. > 64 KB
      }
    } catch (err) { /* never break the page */ }
  }

  d.addEventListener('click', onClick, true);
  w.addEventListener('pagehide', beacon);
  d.addEventListener('visibilitychange', () => d.visibilityState === 'hidden' && beacon());
  w.frustration = { identify(id) { user = id ? String(id) : undefined; flush(); }, flush };
})();
