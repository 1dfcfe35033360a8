// tracerd's management page. Hash routes: `#/` lists sessions, `#/sessions/<id>` shows one
// with its live events. It talks only to the daemon that served it: the REST API under /v1,
// /healthz, and the WebSocket /v1/sessions/{id}/stream (see docs/api.md).
'use strict';

(() => {
  const LIST_REFRESH_MS = 2000;
  const DETAIL_REFRESH_MS = 1000;
  const HEALTH_REFRESH_MS = 5000;
  const MAX_EVENT_ROWS = 500;
  // Events kept in memory beyond the table's rows, so that a new filter shows past matches.
  const KEPT_EVENTS = 5000;
  // How often the event table and the counts are redrawn while events pour in.
  const RENDER_DELAY_MS = 150;
  const TOKEN_KEY = 'tracerd.token';

  // ---------------------------------------------------------------- small helpers

  /** An element with properties (`text`, `className`, `on<event>`, attributes) and children. */
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'className') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of [].concat(children)) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const $ = (root, selector) => (root ? root.querySelector(selector) : null);
  const testId = (root, id) => $(root, `[data-testid="${id}"]`);

  /** Sets text only when it changed (no needless DOM mutations every refresh). */
  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }

  const num = (n) => (typeof n === 'number' && Number.isFinite(n) ? String(n) : '–');
  const enc = encodeURIComponent;

  function fmtBytes(n) {
    if (typeof n !== 'number') return '–';
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = '';
    for (const next of units) {
      if (value < 1024) break;
      value /= 1024;
      unit = next;
    }
    return unit ? `${n} B (${value.toFixed(1)} ${unit})` : `${n} B`;
  }

  /** RFC 3339 → `2026-11-22 02:50:43` (UTC, as the daemon writes it). */
  function fmtTime(text) {
    return typeof text === 'string' && text.length >= 19 ? text.slice(0, 19).replace('T', ' ') : '–';
  }

  function targetText(target) {
    if (!target || typeof target !== 'object') return '–';
    if (target.cgroup) return `cgroup ${target.cgroup}`;
    if (Array.isArray(target.pids)) return `pids ${target.pids.join(', ')}`;
    if (target.launch) {
      const command = Array.isArray(target.launch.command) ? target.launch.command.join(' ') : '';
      return `launch ${target.launch.image || '?'}${command ? ` ${command}` : ''}`;
    }
    const parts = [];
    if (target.container) parts.push(`container ${target.container}`);
    if (target.labels && typeof target.labels === 'object') {
      parts.push(`labels ${Object.entries(target.labels).map(([k, v]) => `${k}=${v}`).join(', ')}`);
    }
    return parts.join(' + ') || '–';
  }

  function backendText(session) {
    const asked = session.backend || 'auto';
    return session.backend_in_use && session.backend_in_use !== asked
      ? `${asked} → ${session.backend_in_use}`
      : asked;
  }

  /** What a session's status cell adds to the status word. */
  function statusNote(session) {
    if (session.not_recording) return `not recording: ${session.not_recording.reason}`;
    if (session.status === 'finished' && session.finished_reason) return session.finished_reason;
    if (session.status === 'failed' && session.error) return session.error;
    return '';
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    /** `status` 0: no answer from the daemon, or a problem found before asking it. */
    constructor(status, body) {
      const safe = body && typeof body === 'object' ? body : {};
      super(safe.message ? String(safe.message) : `HTTP ${status}`);
      this.status = status;
      this.body = safe;
    }
  }

  let memoryToken = null;
  function getToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch {
      return memoryToken; // storage disabled: keep it for this page only
    }
  }
  function setToken(token) {
    memoryToken = token || null;
    try {
      if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* kept in memoryToken */
    }
    updateAuthButtons();
  }

  /** One API call; answers the parsed JSON (null for 204) or throws an ApiError. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, {
        error: 'unreachable',
        message: `tracerd did not answer (${err && err.message ? err.message : 'network error'})`,
      });
    }
    if (response.status === 204) return null;
    const text = await response.text().catch(() => '');
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = new ApiError(
        response.status,
        data && typeof data === 'object'
          ? data
          : { error: `http_${response.status}`, message: text.slice(0, 300) || response.statusText },
      );
      if (response.status === 401) onUnauthorized(error);
      throw error;
    }
    return data;
  }

  // ---------------------------------------------------------------- messages

  const ui = {};
  // What put the current error up: a background refresh ('poll') clears only its own
  // errors when it succeeds again; a user's action clears any.
  let errorSource = null;
  let noticeTimer = null;

  function describe(err) {
    if (!(err instanceof ApiError)) {
      return `Unexpected problem: ${err && err.message ? err.message : String(err)}`;
    }
    const body = err.body;
    let text = body.field ? `${body.field}: ${err.message}` : err.message;
    if (body.error === 'invalid_transition' && body.status) text += ` (status: ${body.status})`;
    const code = [body.error, err.status ? `HTTP ${err.status}` : null].filter(Boolean).join(', ');
    return code ? `${text} [${code}]` : text;
  }

  function report(err, source = 'action') {
    // A 401 is answered by the token dialog while it is open.
    if (err instanceof ApiError && err.status === 401 && ui.tokenDialog && ui.tokenDialog.open) return;
    setText(ui.error, describe(err));
    errorSource = source;
    if (ui.errorDismiss) ui.errorDismiss.hidden = false;
  }

  function clearError(source) {
    if (source && source !== errorSource) return;
    setText(ui.error, '');
    errorSource = null;
    if (ui.errorDismiss) ui.errorDismiss.hidden = true;
  }

  function notify(text) {
    setText(ui.notice, text);
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => setText(ui.notice, ''), 6000);
  }

  // ---------------------------------------------------------------- the token

  // Set when the user closed the dialog without a token: later 401s of background
  // refreshes then go to the alert instead of opening the dialog again every 2 s.
  let tokenDeclined = false;
  let tokenOpenedBy401 = false;

  function waitingForToken() {
    return tokenDeclined || Boolean(ui.tokenDialog && ui.tokenDialog.open);
  }

  function updateAuthButtons() {
    const has = Boolean(getToken());
    if (ui.tokenOpen) ui.tokenOpen.textContent = has ? 'Change token' : 'Set token';
    if (ui.tokenForget) ui.tokenForget.hidden = !has;
  }

  function openTokenDialog(reason, by401) {
    const dialog = ui.tokenDialog;
    if (!dialog) return;
    setText(ui.tokenReason, reason);
    if (dialog.open) return;
    tokenOpenedBy401 = by401;
    ui.tokenInput.value = '';
    if (typeof dialog.showModal === 'function') dialog.showModal();
    else dialog.setAttribute('open', '');
    ui.tokenInput.focus();
  }

  function closeTokenDialog() {
    const dialog = ui.tokenDialog;
    if (!dialog || !dialog.open) return;
    if (typeof dialog.close === 'function') dialog.close();
    else {
      dialog.removeAttribute('open');
      dialog.dispatchEvent(new Event('close'));
    }
  }

  function onUnauthorized(err) {
    if (tokenDeclined) return; // report() shows it in the alert
    const reason = getToken()
      ? `The daemon refused the token (${err.message}). Enter another.`
      : 'This daemon asks for a token.';
    openTokenDialog(reason, true);
  }

  function setUpTokenDialog() {
    let submitted = false;
    ui.tokenForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const token = ui.tokenInput.value.trim();
      if (!token) {
        setText(ui.tokenReason, 'Enter a token, or Cancel.');
        ui.tokenInput.focus();
        return;
      }
      setToken(token);
      tokenDeclined = false;
      submitted = true;
      closeTokenDialog();
      clearError();
      if (view) view.refresh();
    });
    ui.tokenCancel.addEventListener('click', () => closeTokenDialog());
    // Escape closes a modal <dialog> by itself ('cancel', then 'close'); without native
    // dialogs, do the same here.
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && ui.tokenDialog.open && typeof ui.tokenDialog.showModal !== 'function') {
        closeTokenDialog();
      }
    });
    ui.tokenDialog.addEventListener('close', () => {
      if (!submitted && tokenOpenedBy401) {
        tokenDeclined = true;
        report(new ApiError(401, {
          error: 'unauthorized',
          message: 'This daemon needs a token: use “Set token” in the header.',
        }), 'auth');
      }
      submitted = false;
      if (ui.tokenOpen && document.activeElement === document.body) ui.tokenOpen.focus();
    });
    ui.tokenOpen.addEventListener('click', () => openTokenDialog('Enter the token to send as Authorization: Bearer.', false));
    ui.tokenForget.addEventListener('click', () => {
      setToken(null);
      tokenDeclined = false;
      notify('Token forgotten.');
      if (view) view.refresh();
    });
    updateAuthButtons();
  }

  // ---------------------------------------------------------------- refreshing

  /** Runs `task` now and then every `ms` after each run ends (never two at once). */
  function poller(task, ms) {
    let timer = null;
    let running = false;
    let stopped = false;
    async function tick() {
      timer = null;
      if (stopped || running) return;
      running = true;
      try {
        // No point asking again while the user is asked for a token (or declined to give one).
        if (!waitingForToken()) await task();
      } catch (err) {
        report(err, 'poll');
      } finally {
        running = false;
        if (!stopped) timer = setTimeout(tick, ms);
      }
    }
    tick();
    return {
      now() {
        if (stopped || running) return;
        clearTimeout(timer);
        tick();
      },
      stop() {
        stopped = true;
        clearTimeout(timer);
      },
    };
  }

  async function refreshHealth() {
    const box = ui.health;
    let status = 'unreachable';
    let text = 'Daemon: unreachable';
    try {
      const health = await api('GET', '/healthz');
      const problems = health && Array.isArray(health.problems) ? health.problems : [];
      status = health && health.status === 'ok' ? 'ok' : 'degraded';
      const backend = health && health.backend ? ` · default backend ${health.backend}` : '';
      text = `Daemon: ${health && health.status ? health.status : 'unknown'}${backend}`;
      if (problems.length) {
        const first = problems[0] || {};
        text += ` · ${first.reason || 'problem'}: ${first.message || ''}`;
        if (problems.length > 1) text += ` (+${problems.length - 1} more)`;
      }
    } catch {
      /* shown as unreachable */
    }
    box.dataset.status = status;
    setText(ui.healthText, text);
  }

  // ---------------------------------------------------------------- routing

  let view = null;

  function route(moveFocus) {
    if (view) view.leave();
    view = null;
    ui.main.replaceChildren();
    document.title = 'tracerd';
    const match = /^#\/sessions\/([^/?#]+)\/?$/.exec(window.location.hash);
    let id = null;
    if (match) {
      try {
        id = decodeURIComponent(match[1]);
      } catch {
        id = match[1];
      }
    }
    view = id ? detailView(id) : listView();
    // Keyboard and screen-reader users land on the new view's heading.
    const heading = $(ui.main, 'h1');
    if (moveFocus && heading) heading.focus();
  }

  function mountTemplate(id) {
    const template = document.getElementById(id);
    ui.main.append(template.content.cloneNode(true));
    return ui.main;
  }

  /** Puts `nodes` in this order at the start of `parent`, moving only those out of place
   * (moving a node that has focus would drop the focus). */
  function keepOrder(parent, nodes) {
    let expected = parent.firstChild;
    for (const node of nodes) {
      if (node !== expected) parent.insertBefore(node, expected);
      expected = node.nextSibling;
    }
  }

  /** Fills a <dl> from [key, label, value] rows, updating in place; null values are hidden. */
  function setFacts(dl, rows) {
    if (!dl) return;
    for (const [key, label, value] of rows) {
      let dt = $(dl, `dt[data-key="${key}"]`);
      let dd = $(dl, `dd[data-key="${key}"]`);
      if (!dt) {
        dt = el('dt', { 'data-key': key, text: label });
        dd = el('dd', { 'data-key': key, 'data-testid': `fact-${key}` });
        dl.append(dt, dd);
      }
      const shown = value !== null && value !== undefined && value !== '';
      dt.hidden = !shown;
      dd.hidden = !shown;
      setText(dd, shown ? String(value) : '');
    }
  }

  /** Starts, stops or deletes a session; answers the session (null once deleted). */
  async function sessionAction(id, action) {
    if (action === 'delete') {
      await api('DELETE', `/v1/sessions/${enc(id)}`);
      return null;
    }
    return api('POST', `/v1/sessions/${enc(id)}/${action}`);
  }

  const PAST_TENSE = { start: 'Started', stop: 'Stopped', delete: 'Deleted' };

  /** Deleting removes the recorded events too: asked once more, naming the session. */
  function confirmed(action, name) {
    return action !== 'delete' || window.confirm(`Delete session ${name} and its recorded events?`);
  }

  // ---------------------------------------------------------------- the list view

  // What the target field means for each kind, and what picking a container fills in.
  const KINDS = {
    container: {
      label: 'Container',
      hint: 'Exact name, else ID prefix, else part of a name; containers that start later are taken in too.',
      placeholder: 'web',
      pick: (c) => c.name,
    },
    labels: {
      label: 'Labels',
      hint: 'key=value pairs, comma-separated: containers carrying all of them.',
      placeholder: 'app=shop, tier=web',
      pick: (c) => Object.entries(c.labels || {}).map(([k, v]) => `${k}=${v}`).join(', '),
    },
    cgroup: {
      label: 'cgroup path',
      hint: 'An absolute cgroup v2 directory; the cgroups below it are traced too (admin only).',
      placeholder: '/sys/fs/cgroup/system.slice/example.service',
      pick: (c) => c.cgroup_path,
    },
    pids: {
      label: 'Process IDs',
      hint: 'Comma- or space-separated; their threads, not children started later (admin only).',
      placeholder: '1234, 5678',
      pick: (c) => String(c.pid),
    },
    launch: {
      label: 'Image',
      hint: 'A local image: tracerd creates and starts the container, traced from its first syscall.',
      placeholder: 'alpine:3.20',
      pick: (c) => c.image,
    },
  };

  function inputError(field, message) {
    return new ApiError(0, { error: 'invalid_input', field, message });
  }

  function parseLabels(text) {
    const labels = {};
    for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
      const at = part.indexOf('=');
      if (at <= 0) throw inputError('labels', `\`${part}\` is not key=value`);
      labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
    }
    if (!Object.keys(labels).length) throw inputError('labels', 'give at least one key=value');
    return labels;
  }

  function parsePids(text) {
    const pids = text.split(/[\s,]+/).filter(Boolean).map((part) => {
      if (!/^\d+$/.test(part) || Number(part) < 1 || Number(part) > 4294967295) {
        throw inputError('pids', `\`${part}\` is not a process ID`);
      }
      return Number(part);
    });
    if (!pids.length) throw inputError('pids', 'give at least one process ID');
    return pids;
  }

  /** `sh -c "sleep 1"` → ["sh", "-c", "sleep 1"]. */
  function parseCommand(text) {
    const args = [];
    for (const m of text.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)) args.push(m[1] ?? m[2] ?? m[3]);
    return args;
  }

  function listView() {
    const root = mountTemplate('list-template');
    const form = testId(root, 'create-form');
    const kind = testId(root, 'target-kind');
    const value = testId(root, 'target-value');
    const valueLabel = $(root, '#target-value-label');
    const valueHint = $(root, '#target-value-hint');
    const commandField = $(root, '#launch-command-field');
    const picker = testId(root, 'container-picker');
    const pickerStatus = testId(root, 'containers-status');
    const pickerLoad = testId(root, 'containers-load');
    const submit = testId(root, 'create-submit');
    const tbody = $(root, '#session-rows');
    const meta = $(root, '#list-meta');
    const emptyRow = el('tr', { className: 'empty' }, el('td', { colspan: 10, text: 'No sessions yet: create one above.' }));

    const rows = new Map(); // session id → row parts
    let containers = [];
    let containersListed = false;
    let left = false;
    // Bumped by every change made here, so that a refresh that was already under way
    // (and did not see the change) does not undo it on screen.
    let generation = 0;

    function applyKind() {
      const spec = KINDS[kind.value] || KINDS.container;
      setText(valueLabel, spec.label);
      setText(valueHint, spec.hint);
      value.placeholder = spec.placeholder;
      commandField.hidden = kind.value !== 'launch';
      fillFromPicker();
    }

    function fillFromPicker() {
      const container = containers[Number(picker.value)];
      if (picker.value === '' || !container) return;
      const spec = KINDS[kind.value] || KINDS.container;
      value.value = spec.pick(container) || '';
    }

    async function loadContainers() {
      const first = !containersListed;
      containersListed = true;
      setText(pickerStatus, 'Loading running containers…');
      try {
        const data = await api('GET', '/v1/containers');
        if (left) return;
        containers = data && Array.isArray(data.containers) ? data.containers : [];
        setText(pickerStatus, containers.length
          ? `${containers.length} running container${containers.length === 1 ? '' : 's'}.`
          : 'No running containers you may trace.');
      } catch (err) {
        if (left) return;
        containers = [];
        // Not the page's alert: without Docker, cgroup and pid targets still work.
        setText(pickerStatus, `Containers cannot be listed: ${describe(err)}`);
      }
      picker.replaceChildren(el('option', { value: '', text: 'Pick one to fill in the target…' }));
      containers.forEach((c, index) => {
        const traced = Array.isArray(c.sessions) && c.sessions.length ? ` · traced by ${c.sessions.length}` : '';
        const id = typeof c.id === 'string' ? c.id.slice(0, 12) : '?';
        picker.append(el('option', { value: index, text: `${c.name} — ${c.image} (${id})${traced}` }));
      });
      picker.hidden = containers.length === 0;
      pickerLoad.textContent = 'Reload';
      pickerLoad.setAttribute('aria-label', 'Reload running containers');
      if (first && !picker.hidden) picker.focus();
    }

    function buildRequest() {
      const target = value.value.trim();
      if (!target) throw inputError('target', `enter the ${(KINDS[kind.value] || KINDS.container).label.toLowerCase()}`);
      const request = {};
      switch (kind.value) {
        case 'labels': request.target = { labels: parseLabels(target) }; break;
        case 'cgroup': request.target = { cgroup: target }; break;
        case 'pids': request.target = { pids: parsePids(target) }; break;
        case 'launch': {
          const launch = { image: target };
          const command = parseCommand(testId(root, 'launch-command').value.trim());
          if (command.length) launch.command = command;
          request.target = { launch };
          break;
        }
        default: request.target = { container: target };
      }
      // Optional fields are left out when blank: the daemon refuses empty values.
      const name = testId(root, 'session-name').value.trim();
      if (name) request.name = name;
      const syscalls = testId(root, 'syscalls').value.split(',').map((s) => s.trim()).filter(Boolean);
      if (syscalls.length) request.syscalls = syscalls;
      const backend = testId(root, 'backend').value;
      if (backend) request.backend = backend;
      const label = testId(root, 'label').value.trim();
      if (label) request.label = label;
      if (testId(root, 'failed-only').checked) request.conditions = { failed_only: true };
      const limits = {};
      const ttl = testId(root, 'ttl').value.trim();
      if (ttl) limits.ttl = ttl;
      const maxEvents = testId(root, 'max-events').value.trim();
      if (maxEvents) {
        if (!/^\d+$/.test(maxEvents) || Number(maxEvents) < 1) throw inputError('limits.max_events', 'must be a whole number from 1');
        limits.max_events = Number(maxEvents);
      }
      if (Object.keys(limits).length) request.limits = limits;
      return request;
    }

    function makeRow(session) {
      const id = session.id;
      const button = (action, label, className) => el('button', {
        type: 'button',
        className,
        'data-testid': action,
        'data-action': action,
        'data-session-id': id,
        'aria-label': `${label} ${session.name}`,
        text: label,
      });
      const row = {
        link: el('a', { href: `#/sessions/${enc(id)}`, className: 'session-link', 'data-testid': 'session-link', text: session.name }),
        status: el('span', { 'data-testid': 'session-status' }),
        note: el('span', { className: 'status-note' }),
        target: el('td', { className: 'target' }),
        backend: el('td'),
        matched: el('td', { className: 'num', 'data-testid': 'counter-matched' }),
        delivered: el('td', { className: 'num', 'data-testid': 'counter-delivered' }),
        dropped: el('td', { className: 'num', 'data-testid': 'counter-dropped' }),
        runs: el('td', { className: 'num', 'data-testid': 'runs' }),
        created: el('td', { className: 'nowrap' }),
        start: button('start', 'Start'),
        stop: button('stop', 'Stop'),
        remove: button('delete', 'Delete', 'danger'),
        busy: false,
      };
      row.tr = el('tr', { 'data-testid': 'session-row', 'data-session-id': id, 'data-session-name': session.name }, [
        el('td', {}, row.link),
        el('td', {}, [row.status, row.note]),
        row.target, row.backend, row.matched, row.delivered, row.dropped, row.runs, row.created,
        el('td', { className: 'actions' }, [row.start, row.stop, row.remove]),
      ]);
      return row;
    }

    function updateRow(row, session) {
      row.session = session;
      const counters = session.counters || {};
      setText(row.link, session.name || session.id);
      if (row.tr && row.tr.dataset.sessionName !== session.name) row.tr.dataset.sessionName = session.name || '';
      setText(row.status, session.status || '?');
      row.status.className = `status status-${session.status}`;
      setText(row.note, statusNote(session));
      setText(row.target, targetText(session.target));
      setText(row.backend, backendText(session));
      setText(row.matched, num(counters.matched));
      setText(row.delivered, num(counters.delivered));
      setText(row.dropped, num(counters.dropped));
      row.dropped.classList.toggle('warn', counters.dropped > 0);
      setText(row.runs, num(session.runs));
      setText(row.created, fmtTime(session.created_at));
      row.start.disabled = row.busy || !['created', 'stopped'].includes(session.status);
      row.stop.disabled = row.busy || session.status !== 'running';
      row.remove.disabled = row.busy;
    }

    function upsert(session) {
      let row = rows.get(session.id);
      if (!row) {
        row = makeRow(session);
        rows.set(session.id, row);
        emptyRow.remove();
        tbody.prepend(row.tr);
      }
      updateRow(row, session);
      return row;
    }

    function sync(sessions) {
      const seen = new Set();
      // The API lists oldest first; the page shows the newest first.
      const ordered = [];
      for (const session of sessions.slice().reverse()) {
        if (!session || !session.id) continue;
        seen.add(session.id);
        ordered.push(upsert(session).tr);
      }
      for (const [id, row] of rows) {
        if (!seen.has(id)) {
          row.tr.remove();
          rows.delete(id);
        }
      }
      if (rows.size) {
        emptyRow.remove();
        keepOrder(tbody, ordered);
      } else if (!emptyRow.isConnected) {
        tbody.append(emptyRow);
      }
      const running = sessions.filter((s) => s && s.status === 'running').length;
      setText(meta, `${sessions.length} session${sessions.length === 1 ? '' : 's'}, ${running} running. Refreshed every 2 s.`);
    }

    async function refresh() {
      const started = generation;
      const sessions = [];
      let pageToken = null;
      // Pages are oldest first: follow them all, or the newest sessions would be missing.
      for (let page = 0; page < 50; page += 1) {
        const query = new URLSearchParams({ limit: '1000' });
        if (pageToken) query.set('page_token', pageToken);
        const data = await api('GET', `/v1/sessions?${query}`);
        if (data && Array.isArray(data.sessions)) sessions.push(...data.sessions);
        pageToken = data && data.next_page_token;
        if (!pageToken) break;
      }
      if (left || started !== generation) return;
      sync(sessions);
      clearError('poll');
      clearError('auth');
    }

    async function act(row, action) {
      const id = row.session ? row.session.id : null;
      if (!id || row.busy || !confirmed(action, row.session.name)) return;
      clearError();
      row.busy = true;
      generation += 1;
      updateRow(row, row.session);
      try {
        const session = await sessionAction(id, action);
        notify(`${PAST_TENSE[action]} session ${row.session.name}.`);
        if (left) return;
        row.busy = false;
        if (session) {
          updateRow(row, session);
          // Keep the keyboard where the next step is.
          if (action === 'start' && !row.stop.disabled) row.stop.focus();
          if (action === 'stop' && !row.start.disabled) row.start.focus();
        } else {
          const next = row.tr.nextElementSibling || row.tr.previousElementSibling;
          row.tr.remove();
          rows.delete(id);
          const link = next ? $(next, 'a') : null;
          if (link) link.focus();
          else $(root, 'h1').focus();
          if (!rows.size) tbody.append(emptyRow);
        }
      } catch (err) {
        report(err);
        row.busy = false;
        if (!left && row.session) updateRow(row, row.session);
        const again = action === 'delete' ? row.remove : action === 'start' ? row.start : row.stop;
        if (!left && !again.disabled) again.focus();
      } finally {
        generation += 1;
        if (!left) poll.now();
      }
    }

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (submit.disabled) return;
      let request;
      try {
        request = buildRequest();
      } catch (err) {
        report(err);
        value.focus();
        return;
      }
      clearError();
      submit.disabled = true;
      generation += 1;
      try {
        const session = await api('POST', '/v1/sessions', request);
        if (left) return;
        if (session && session.id) upsert(session);
        testId(root, 'session-name').value = '';
        notify(`Created session ${session && session.name ? session.name : ''}: start it from the list.`);
      } catch (err) {
        report(err);
      } finally {
        submit.disabled = false;
        generation += 1;
        if (!left) poll.now();
      }
    });
    kind.addEventListener('change', applyKind);
    picker.addEventListener('change', fillFromPicker);
    pickerLoad.addEventListener('click', loadContainers);
    tbody.addEventListener('click', (event) => {
      const button = event.target instanceof Element ? event.target.closest('button[data-action]') : null;
      const row = button ? rows.get(button.dataset.sessionId) : null;
      if (row) act(row, button.dataset.action);
    });

    applyKind();
    tbody.append(emptyRow);
    const poll = poller(refresh, LIST_REFRESH_MS);
    return {
      refresh() {
        poll.now();
        if (containersListed) loadContainers();
      },
      leave() {
        left = true;
        poll.stop();
      },
    };
  }

  // ---------------------------------------------------------------- the detail view

  function detailView(id) {
    const root = mountTemplate('detail-template');
    const title = $(root, '#detail-title');
    const status = testId(root, 'session-status');
    const notRecording = testId(root, 'not-recording');
    const buttons = {
      start: testId(root, 'start'),
      stop: testId(root, 'stop'),
      delete: testId(root, 'delete'),
    };
    const exportBox = testId(root, 'export-status');
    const countBody = $(root, '#count-rows');
    const countsMeta = testId(root, 'counts-meta');
    const eventBody = $(root, '#event-rows');
    const streamStatus = testId(root, 'stream-status');
    const pauseButton = testId(root, 'stream-pause');
    const filterForm = testId(root, 'event-filters');

    let session = null;
    let left = false;
    let busy = false;

    // What the stream has brought.
    const counts = new Map(); // syscall → calls
    const countRows = new Map(); // syscall → {tr, value, fill}
    let kept = []; // the newest KEPT_EVENTS events, oldest first
    let pending = []; // matching events not yet in the table, oldest first
    let received = 0;
    let evicted = 0;
    let lastSeq = 0;
    let lag = 0;
    let countsDirty = true;
    let paused = false;
    let filters = { syscalls: null, pid: null, failed: false };
    let renderTimer = null;
    let filterTimer = null;

    // The WebSocket: one at a time; each run of the session ends its stream, and the next
    // connection resumes after the last event seen (`after_seq`), so nothing is counted twice.
    let ws = null;
    let streamState = 'connecting';
    let endReason = '';
    let complete = false; // got an `end` frame: everything recorded so far was sent
    let failures = 0;
    let retryAt = 0;

    function openStream() {
      if (ws || left) return;
      const query = new URLSearchParams();
      if (lastSeq > 0) query.set('after_seq', String(lastSeq));
      // Browsers cannot set headers on a WebSocket: the daemon takes the token as ?token=.
      const token = getToken();
      if (token) query.set('token', token);
      const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
      const qs = query.toString();
      const url = `${scheme}//${window.location.host}/v1/sessions/${enc(id)}/stream${qs ? `?${qs}` : ''}`;
      let socket;
      try {
        socket = new WebSocket(url);
      } catch (err) {
        streamState = 'failed';
        endReason = err && err.message ? err.message : 'cannot open the stream';
        renderStreamStatus();
        return;
      }
      ws = socket;
      complete = false;
      let gotEvents = false;
      streamState = 'connecting';
      renderStreamStatus();
      socket.onopen = () => {
        if (ws !== socket) return;
        streamState = 'open';
        renderStreamStatus();
      };
      socket.onmessage = (message) => {
        if (ws !== socket) return;
        let frame = null;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return; // not JSON: nothing the page can use
        }
        if (!frame || typeof frame !== 'object') return;
        if (frame.type === 'events' && Array.isArray(frame.events)) {
          gotEvents = gotEvents || frame.events.length > 0;
          onEvents(frame);
        } else if (frame.type === 'state' && frame.session) {
          render(frame.session);
        } else if (frame.type === 'gap') {
          evicted += Number(frame.gap) || 0;
          countsDirty = true;
          scheduleRender();
        } else if (frame.type === 'end') {
          complete = true;
          endReason = frame.reason || '';
        } else if (frame.type === 'error') {
          report(new ApiError(0, { error: 'stream', message: frame.message || 'stream error' }));
        }
      };
      socket.onerror = () => {
        /* a close event follows, with what there is to know */
      };
      socket.onclose = () => {
        if (ws !== socket) return;
        ws = null;
        streamState = complete ? 'ended' : 'lost';
        // Back off while connections bring nothing (a refused upgrade, a session that
        // ends its stream at once); come back at once after a useful one.
        failures = gotEvents ? 0 : Math.min(failures + 1, 5);
        retryAt = Date.now() + (failures ? 1000 * 2 ** (failures - 1) : 0);
        renderStreamStatus();
      };
    }

    function closeStream() {
      const socket = ws;
      ws = null;
      if (!socket) return;
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = null;
      // Closing a socket that is still connecting makes browsers log an error: close it
      // once it is open instead.
      if (socket.readyState === WebSocket.CONNECTING) socket.onopen = () => socket.close(1000);
      else socket.close(1000);
    }

    function matches(event) {
      if (filters.syscalls && !filters.syscalls.has(event.syscall)) return false;
      if (filters.pid !== null && event.pid !== filters.pid && event.tid !== filters.pid) return false;
      if (filters.failed && !(event.ret < 0)) return false;
      return true;
    }

    function onEvents(frame) {
      for (const event of frame.events) {
        if (!event || typeof event !== 'object') continue;
        if (typeof event.seq === 'number') {
          if (event.seq <= lastSeq) continue; // already counted (a resumed stream)
          lastSeq = event.seq;
        }
        received += 1;
        const name = event.syscall || '?';
        counts.set(name, (counts.get(name) || 0) + 1);
        kept.push(event);
        if (!paused && matches(event)) pending.push(event);
      }
      if (typeof frame.last_seq === 'number' && frame.last_seq > lastSeq) lastSeq = frame.last_seq;
      lag = Number(frame.lag) || 0;
      if (kept.length > KEPT_EVENTS * 1.2) kept = kept.slice(-KEPT_EVENTS);
      if (pending.length > MAX_EVENT_ROWS) pending = pending.slice(-MAX_EVENT_ROWS);
      countsDirty = true;
      scheduleRender();
    }

    function scheduleRender() {
      if (renderTimer === null && !left) renderTimer = setTimeout(renderLive, RENDER_DELAY_MS);
    }

    function eventRow(event) {
      const failed = typeof event.ret === 'number' && event.ret < 0;
      const time = typeof event.ts === 'string' && event.ts.length >= 26 ? event.ts.slice(11, 26) : '–';
      const container = event.container && event.container.name
        ? el('span', { className: 'sub', text: event.container.name })
        : null;
      const call = typeof event.strace === 'string'
        ? event.strace
        : `${event.syscall || '?'}(…) = ${num(event.ret)}`;
      return el('tr', {
        'data-testid': 'event-row',
        'data-seq': event.seq,
        'data-syscall': event.syscall,
        className: failed ? 'failed' : null,
      }, [
        el('td', { className: 'nowrap', title: event.ts, text: time }),
        el('td', { className: 'nowrap', text: `${num(event.pid)}/${num(event.tid)}` }),
        el('td', {}, [el('span', { text: event.comm || '' }), container]),
        el('td', { className: 'call' }, el('code', { text: call })),
      ]);
    }

    function renderLive() {
      renderTimer = null;
      if (left) return;
      if (pending.length && !paused) {
        const batch = pending;
        pending = [];
        const fragment = document.createDocumentFragment();
        for (let i = batch.length - 1; i >= 0; i -= 1) fragment.append(eventRow(batch[i]));
        eventBody.prepend(fragment); // newest first
        while (eventBody.childElementCount > MAX_EVENT_ROWS) eventBody.lastElementChild.remove();
      }
      if (countsDirty) renderCounts();
      renderStreamStatus();
    }

    /** The table again from the kept events: after a filter change or a resume. */
    function rebuildTable() {
      pending = [];
      const rows = [];
      for (let i = kept.length - 1; i >= 0 && rows.length < MAX_EVENT_ROWS; i -= 1) {
        if (matches(kept[i])) rows.push(eventRow(kept[i]));
      }
      eventBody.replaceChildren(...rows);
      renderStreamStatus();
    }

    function renderCounts() {
      countsDirty = false;
      const entries = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
      const max = entries.length ? entries[0][1] : 0;
      const order = [];
      for (const [name, calls] of entries) {
        let row = countRows.get(name);
        if (!row) {
          const value = el('td', { className: 'num', 'data-testid': 'syscall-count', 'data-syscall': name });
          const fill = el('span', { className: 'fill' });
          // The bar repeats the number: hidden from screen readers.
          const bar = el('td', { className: 'bar-col', 'aria-hidden': 'true' }, el('span', { className: 'bar' }, fill));
          row = { tr: el('tr', { 'data-syscall': name }, [el('th', { scope: 'row', text: name }), value, bar]), value, fill };
          countRows.set(name, row);
        }
        setText(row.value, String(calls));
        row.fill.style.width = `${max ? Math.max(0.5, (calls / max) * 100) : 0}%`;
        order.push(row.tr);
      }
      keepOrder(countBody, order);
      // Counted here from the stream (the API has no per-syscall counts): every event read
      // from the session's log, from its first to #lastSeq, whatever the table's filters.
      let text = received
        ? `${received} call${received === 1 ? '' : 's'} counted from the session's event log (events up to #${lastSeq}), live.`
        : 'No events yet.';
      if (evicted) text += ` ${evicted} evicted from the log before they could be read (not counted).`;
      setText(countsMeta, text);
    }

    function renderStreamStatus() {
      const shown = eventBody.childElementCount;
      const parts = [];
      if (streamState === 'open') parts.push('Live');
      else if (streamState === 'connecting') parts.push('Connecting…');
      else if (streamState === 'ended') parts.push(`Stream ended: ${endReason || 'the session is not running'}`);
      else if (streamState === 'lost') parts.push('Stream disconnected; reconnecting while the session runs');
      else parts.push(`Stream failed: ${endReason}`);
      if (lastSeq) parts.push(`last event #${lastSeq}`);
      if (lag) parts.push(`${lag} behind`);
      const filtered = filters.syscalls || filters.pid !== null || filters.failed;
      parts.push(`${shown} row${shown === 1 ? '' : 's'} shown${filtered ? ' (filtered)' : ''}, newest first, at most ${MAX_EVENT_ROWS}`);
      if (paused) parts.push('table paused');
      setText(streamStatus, `${parts.join(' · ')}.`);
    }

    function render(next) {
      if (!next || next.id !== id || left) return;
      session = next;
      const counters = next.counters || {};
      setText(title, next.name || id);
      document.title = `${next.name || id} · tracerd`;
      setText(status, next.status || '?');
      status.className = `status status-${next.status}`;
      const canStart = ['created', 'stopped'].includes(next.status);
      buttons.start.disabled = busy || !canStart;
      buttons.stop.disabled = busy || next.status !== 'running';
      buttons.delete.disabled = busy;

      const nr = next.not_recording;
      notRecording.hidden = !nr;
      setText(notRecording, nr ? `Not recording (${nr.reason}): ${nr.message || ''}${nr.since ? ` since ${fmtTime(nr.since)} UTC` : ''}` : '');

      const traced = next.traced && Array.isArray(next.traced.containers)
        ? `${next.traced.containers.map((c) => `${c.name} (${String(c.id || '').slice(0, 12)})`).join(', ') || 'none'}, matched by ${next.traced.matched_by}`
        : null;
      const conditions = next.conditions || {};
      const limits = next.limits || {};
      const limitText = [
        limits.ttl ? `ttl ${limits.ttl}` : null,
        limits.max_events ? `max ${limits.max_events} events` : null,
        limits.ftrace_buffer_kb ? `ftrace buffer ${limits.ftrace_buffer_kb} KiB` : null,
      ].filter(Boolean).join(', ');
      const conditionText = [
        conditions.failed_only ? 'failed calls only' : null,
        Array.isArray(conditions.tgids) ? `processes ${conditions.tgids.join(', ')}` : null,
      ].filter(Boolean).join(', ');
      setFacts($(root, '#detail-facts'), [
        ['id', 'ID', next.id],
        ['tenant', 'Tenant', next.tenant],
        ['target', 'Target', targetText(next.target)],
        ['traced', 'Traced containers', traced],
        ['syscalls', 'Syscalls', Array.isArray(next.syscalls) ? next.syscalls.join(', ') : 'all'],
        ['conditions', 'Conditions', conditionText || null],
        ['label', 'Label', next.label],
        ['backend', 'Backend', backendText(next)],
        ['backend_reason', 'Why this backend', next.backend_reason],
        ['limits', 'Limits', limitText || null],
        ['runs', 'Runs', num(next.runs)],
        ['created', 'Created (UTC)', fmtTime(next.created_at)],
        ['started', 'Started (UTC)', next.started_at ? fmtTime(next.started_at) : null],
        ['stopped', 'Stopped (UTC)', next.stopped_at ? fmtTime(next.stopped_at) : null],
        ['finished_reason', 'Finished because', next.finished_reason],
        ['error', 'Error', next.error],
      ]);

      for (const key of ['matched', 'delivered', 'dropped', 'exported', 'spooled', 'evicted']) {
        setText(testId(root, `counter-${key}`), num(counters[key]));
      }
      setText(testId(root, 'counter-export-failed'), num(counters.export_failed));
      const late = counters.late_joins
        ? `${counters.late_joins} (untraced ${counters.late_join_delay_us} µs in all, at most ${counters.late_join_max_delay_us} µs)`
        : num(counters.late_joins);
      setText(testId(root, 'counter-late-joins'), late);
      testId(root, 'counter-dropped').classList.toggle('warn', counters.dropped > 0);

      renderExport(next);
      countsDirty = true;
      scheduleRender();
    }

    function renderExport(next) {
      const exp = next.export_status;
      const summary = $(exportBox, '#export-summary');
      const facts = $(exportBox, '#export-facts');
      const asked = next.export && typeof next.export === 'object' ? next.export : null;
      if (exp) {
        exportBox.dataset.state = exp.state || 'unknown';
        setText(summary, exp.state === 'ok' ? 'Spans are going out.'
          : exp.state === 'retrying' ? 'The collector is slow or away: spans wait in memory and the spool.'
            : exp.state === 'spool_full' ? 'The spool is full: new spans are refused (counted as export failed).'
              : '');
      } else {
        // export_status exists only while the session runs and exports.
        const off = asked && 'otlp' in asked && asked.otlp === null;
        exportBox.dataset.state = off ? 'off' : 'none';
        setText(summary, off ? 'Export is off for this session: events stay in the event log.'
          : next.status === 'running' ? 'Not exporting: neither the session nor the daemon names a collector.'
            : 'Export status is shown while the session runs.');
      }
      const configured = asked && asked.otlp ? asked.otlp.endpoint : null;
      setFacts(facts, [
        ['state', 'State', exp ? exp.state : null],
        ['endpoint', 'Endpoint', exp ? exp.endpoint : configured],
        ['protocol', 'Protocol', exp ? exp.protocol : null],
        ['pending_spans', 'Pending spans', exp ? num(exp.pending_spans) : null],
        ['spool_bytes', 'Spool', exp ? fmtBytes(exp.spool_bytes) : null],
        ['last_error', 'Last error', exp ? (exp.last_error || 'none') : null],
      ]);
    }

    let refreshing = null; // the refresh under way, if any

    async function refresh() {
      // Not while a start, stop or delete is under way: a read racing a delete would
      // answer 404 (and the action's own answer is the newer state anyway).
      if (busy) return;
      refreshing = readSession();
      try {
        await refreshing;
      } finally {
        refreshing = null;
      }
    }

    async function readSession() {
      let next;
      try {
        next = await api('GET', `/v1/sessions/${enc(id)}`);
      } catch (err) {
        if (left) return;
        if (err instanceof ApiError && (err.status === 404 || err.status === 400)) {
          // Gone (deleted elsewhere) or never was: nothing more to follow.
          poll.stop();
          closeStream();
          streamState = 'failed';
          endReason = 'no such session';
          renderStreamStatus();
          setText(title, 'No such session');
          buttons.start.disabled = true;
          buttons.stop.disabled = true;
          buttons.delete.disabled = true;
        }
        throw err;
      }
      if (left) return;
      render(next);
      clearError('poll');
      clearError('auth');
      // Open the stream once to read what was recorded, and again for each new run.
      const wanted = !complete || next.status === 'running';
      if (wanted && !ws && Date.now() >= retryAt) openStream();
    }

    async function act(action) {
      if (busy || !session || !confirmed(action, session.name)) return;
      clearError();
      busy = true;
      render(session);
      try {
        if (refreshing) await refreshing.catch(() => {});
        const next = await sessionAction(id, action);
        notify(`${PAST_TENSE[action]} session ${session.name}.`);
        if (left) return;
        if (!next) {
          window.location.hash = '#/';
          return;
        }
        busy = false;
        render(next);
        if (action === 'start') {
          failures = 0;
          retryAt = 0;
          if (!ws) openStream();
          buttons.stop.focus();
        } else if (action === 'stop') {
          buttons.start.focus();
        }
      } catch (err) {
        report(err);
        busy = false;
        if (!left && session) render(session);
        if (!left && !buttons[action].disabled) buttons[action].focus();
      } finally {
        busy = false;
      }
    }

    function readFilters() {
      const names = testId(root, 'filter-syscall').value.split(',').map((s) => s.trim()).filter(Boolean);
      const pidText = testId(root, 'filter-pid').value.trim();
      const pid = /^\d+$/.test(pidText) ? Number(pidText) : null;
      filters = {
        syscalls: names.length ? new Set(names) : null,
        pid,
        failed: testId(root, 'filter-failed').checked,
      };
      rebuildTable();
    }

    for (const [action, button] of Object.entries(buttons)) button.addEventListener('click', () => act(action));
    filterForm.addEventListener('submit', (event) => {
      event.preventDefault();
      readFilters();
    });
    // Filters apply while typing, a moment after the last key.
    filterForm.addEventListener('input', () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(readFilters, 250);
    });
    pauseButton.addEventListener('click', () => {
      paused = !paused;
      pauseButton.setAttribute('aria-pressed', String(paused));
      pauseButton.textContent = paused ? 'Resume table' : 'Pause table';
      if (!paused) rebuildTable();
      else renderStreamStatus();
    });

    renderStreamStatus();
    renderCounts();
    const poll = poller(refresh, DETAIL_REFRESH_MS);
    return {
      refresh() {
        // A new token: reconnect with it.
        closeStream();
        failures = 0;
        retryAt = 0;
        complete = false;
        poll.now();
      },
      leave() {
        left = true;
        poll.stop();
        closeStream();
        clearTimeout(renderTimer);
        clearTimeout(filterTimer);
      },
    };
  }

  // ---------------------------------------------------------------- start-up

  function init() {
    // The page's fixed elements, by their ids in index.html.
    const fixed = {
      main: 'main',
      error: 'error',
      errorDismiss: 'error-dismiss',
      notice: 'notice',
      health: 'health',
      healthText: 'health-text',
      tokenDialog: 'token-dialog',
      tokenForm: 'token-form',
      tokenInput: 'token-input',
      tokenReason: 'token-reason',
      tokenCancel: 'token-cancel',
      tokenOpen: 'token-open',
      tokenForget: 'token-forget',
    };
    for (const [key, id] of Object.entries(fixed)) ui[key] = document.getElementById(id);
    if (!ui.main || !ui.error || !ui.tokenDialog) return; // not tracerd's page

    ui.errorDismiss.addEventListener('click', () => clearError());
    setUpTokenDialog();
    // Anything that slipped through goes to the alert rather than the console.
    window.addEventListener('unhandledrejection', (event) => {
      event.preventDefault();
      report(event.reason);
    });
    window.addEventListener('hashchange', () => route(true));
    // /healthz says whether the daemon wants a token: ask for it before the first API call,
    // rather than learn it from a 401 (which the browser would log as an error).
    api('GET', '/healthz')
      .then((health) => {
        if (health && health.auth === 'token' && !getToken()) {
          openTokenDialog('This daemon asks for a token.', true);
        }
      })
      .catch(() => {
        /* the health poll below shows the daemon unreachable */
      })
      .finally(() => {
        route(false);
        // /healthz needs no token: polled even while the token is asked for.
        refreshHealth();
        setInterval(refreshHealth, HEALTH_REFRESH_MS);
      });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
