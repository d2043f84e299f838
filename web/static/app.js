// The chunkraid dashboard: one ES module, no build step. Every figure comes
// from the REST API with the signed-in token, sent as the Authorization
// header; the token lives in this tab's sessionStorage, never in a URL.
// Data is written into the page with textContent only.

const $ = (sel) => document.querySelector(sel);
const KEY = 'chunkraid-token';
let token = sessionStorage.getItem(KEY) || '';
let role = '';
let timer = 0;
let lastStats = 0;
let busy = false;
let watchRun = 0;

// editing: the user is typing in a volume's action field, which a redraw
// would lose.
function editing() {
  const a = document.activeElement;
  return a && a.closest && a.closest('#volume-list') && a.tagName === 'INPUT';
}

// api calls the REST API; an error carries the API's message.
async function api(path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + token };
  if (opts.body) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { ...opts, headers, cache: 'no-store' });
  if (r.status === 204) return null;
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const e = new Error(body && body.message ? body.message : r.status + ' ' + r.statusText);
    e.status = r.status;
    throw e;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'scope') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function table(headers, rows, caption) {
  const t = el('table');
  if (caption) t.append(el('caption', {}, caption));
  t.append(el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', { scope: 'col' }, h)))));
  const body = el('tbody');
  for (const r of rows) body.append(r);
  t.append(body);
  return t;
}

const UNITS = [['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10],
  ['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10], ['B', 1]];

// parseSize reads a size as the CLI does, with the CLI's message.
export function parseSize(s) {
  let t = s.trim();
  let mult = 1;
  for (const [suf, m] of UNITS) {
    if (t.endsWith(suf) && t.length > suf.length) {
      t = t.slice(0, -suf.length).trim();
      mult = m;
      break;
    }
  }
  if (!/^\d+$/.test(t)) {
    throw new Error(`invalid size "${s}": use a whole number of bytes or a number with a unit such as 64MiB, 20GiB`);
  }
  return Number(t) * mult;
}

function bytes(n) {
  for (const [u, m] of [['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]]) {
    if (n >= m) return (n / m).toFixed(n % m === 0 ? 0 : 1) + ' ' + u;
  }
  return n + ' B';
}

function bar(label, part, whole) {
  const pct = whole > 0 ? Math.min(100, (100 * part) / whole) : 0;
  const b = el('div', { class: 'bar', role: 'img', 'aria-label': `${label}: ${bytes(part)} of ${bytes(whole)}` }, el('span'));
  b.firstChild.style.width = pct.toFixed(1) + '%';
  return el('div', { class: 'cap' }, el('div', {}, `${label}: ${bytes(part)} of ${bytes(whole)} (${pct.toFixed(1)} %)`), b);
}

function volumeHealth(v) {
  const states = v.sets.flatMap((s) => s.members.map((m) => m.state));
  if (states.every((s) => s === 'in_sync')) return 'healthy';
  return 'degraded';
}

function renderOverview(cluster, volumes, servers) {
  const degraded = volumes.filter((v) => volumeHealth(v) !== 'healthy');
  const members = volumes.flatMap((v) => v.sets.flatMap((s) => s.members));
  const notInSync = members.filter((m) => m.state !== 'in_sync').length;
  const offline = servers.filter((s) => s.state !== 'online').length;
  const h = $('#health');
  h.textContent = degraded.length === 0 && offline === 0
    ? `Healthy: ${volumes.length} volumes, ${members.length} members in sync, ${servers.length} chunkservers online`
    : `${degraded.length} of ${volumes.length} volumes degraded, ${notInSync} members not in sync, ${offline} chunkservers offline`;
  h.className = 'health ' + (degraded.length === 0 && offline === 0 ? 'healthy' : 'degraded');
  $('#capacity').replaceChildren(
    bar('Provisioned', cluster.provisioned_bytes, cluster.raw_capacity_bytes),
    bar('Allocated', cluster.allocated_bytes, cluster.raw_capacity_bytes),
    bar('Used (raw, all files)', cluster.raw_capacity_bytes - cluster.raw_free_bytes, cluster.raw_capacity_bytes),
    el('p', {}, `Free: ${bytes(cluster.raw_free_bytes)}; new volumes may still take ${bytes(cluster.provisionable_bytes)} (overcommit ${cluster.overcommit}).`));
  const resyncing = members.filter((m) => m.state === 'resyncing' || m.state === 'rebuilding').length;
  $('#counts').replaceChildren(el('p', {}, `Sets degraded: ${volumes.reduce((n, v) => n + v.sets.filter((s) => s.members.some((m) => m.state !== 'in_sync')).length, 0)}; members resyncing or rebuilding: ${resyncing}.`));
}

function progress(m) {
  if (!(m.state === 'resyncing' || m.state === 'rebuilding') || !m.resync_total_bytes) return '';
  const p = el('progress', { max: m.resync_total_bytes, value: m.resync_done_bytes, 'aria-label': `${m.state} progress` });
  return el('span', {}, p, ` ${bytes(m.resync_done_bytes)} of ${bytes(m.resync_total_bytes)}`);
}

function renderVolumes(volumes) {
  const out = [];
  for (const v of volumes) {
    const health = volumeHealth(v);
    out.push(el('h3', {}, `${v.name} `, el('span', { class: health, 'data-health': health, 'data-volume-health': v.name }, health)));
    out.push(el('p', {}, `${bytes(v.size_bytes)}, ${v.layout}, ${v.sets.length} sets, host ${v.host || '(none)'}, epoch ${v.epoch}`));
    if (v.clone_of) out.push(el('p', { class: 'clone', 'data-clone-of': v.name }, `Writable clone of ${v.clone_of}: shares the blocks it has not written`));
    out.push(qosLine(v));
    out.push(snapshotsLine(v));
    out.push(statsLine(v.name));
    if (role === 'admin') out.push(volumeActions(v));
    const rows = [];
    for (const s of v.sets) {
      s.members.forEach((m, i) => {
        rows.push(el('tr', { 'data-volume': v.name, 'data-set': String(s.index), 'data-member': String(i), 'data-chunkserver': m.chunkserver, 'data-state': m.state },
          el('td', {}, i === 0 ? String(s.index) : ''), el('td', {}, i === 0 ? bytes(s.dirty_bytes) : ''),
          el('td', {}, String(i)), el('td', {}, m.chunkserver),
          el('td', { class: 'state-' + m.state }, m.state), el('td', {}, progress(m)), el('td', {}, m.error || '')));
      });
    }
    out.push(table(['Set', 'Dirty', 'Member', 'Chunkserver', 'State', 'Progress', 'Why'], rows, `Members of ${v.name}`));
  }
  if (volumes.length === 0) out.push(el('p', {}, 'No volumes yet.'));
  $('#volume-list').replaceChildren(...out);
}

// qosLine says a volume's I/O limits (chunkraid volume qos).
const QOS_LIMITS = [['iops', 'IOPS', false], ['read_iops', 'read IOPS', false], ['write_iops', 'write IOPS', false],
  ['bps', 'bytes/s', true], ['read_bps', 'read bytes/s', true], ['write_bps', 'write bytes/s', true]];

function qosLine(v) {
  const q = v.qos || {};
  const parts = QOS_LIMITS.filter(([k]) => q[k] && q[k].rate).map(([k, label, isBytes]) =>
    isBytes ? `${label} ${bytes(q[k].rate)} (burst ${bytes(q[k].burst)})` : `${label} ${q[k].rate} (burst ${q[k].burst})`);
  return el('p', { class: 'qos', 'data-qos': v.name }, 'I/O limits: ' + (parts.length ? parts.join(', ') : 'none'));
}

// snapshotsLine lists a volume's snapshots (chunkraid snapshot list): state,
// size, how long the volume's commands were held, and where one is served.
function snapshotsLine(v) {
  const snaps = v.snapshots || [];
  const parts = snaps.map((sn) => {
    let d = `${sn.name} (${sn.state}, ${bytes(sn.size_bytes)}`;
    if (sn.state === 'ready') d += `, commands held ${(sn.pause_us / 1000).toFixed(1)} ms`;
    if (sn.host) d += `, served read-only by ${sn.host} as ${sn.iqn}`;
    return d + ')';
  });
  return el('p', { class: 'snapshots', 'data-snapshots': v.name, 'data-count': String(snaps.length) },
    'Snapshots: ' + (parts.length ? parts.join('; ') : 'none'));
}

// history keeps the last figures of each volume for its sparkline.
const history = new Map();
const actionErrors = new Map();
const HISTORY = 60;

function statsLine(name) {
  const h = history.get(name) || [];
  const last = h[h.length - 1];
  const ms = (us) => (us ? (us / 1000).toFixed(2) + ' ms' : '-');
  const text = last
    ? `${(last.read_iops + last.write_iops).toFixed(0)} IOPS, ${bytes(Math.round(last.read_bytes_per_sec + last.write_bytes_per_sec))}/s, p99 read ${ms(last.read_latency_p99_us)}, write ${ms(last.write_latency_p99_us)}`
    : 'no figures yet';
  const throttled = last && (last.throttled || last.busy)
    ? `; ${last.throttled} commands waited ${last.throttled_seconds.toFixed(2)} s for the I/O limits, ${last.busy} answered TASK SET FULL`
    : '';
  const iops = h.map((s) => s.read_iops + s.write_iops);
  const lat = h.map((s) => Math.max(s.read_latency_p99_us, s.write_latency_p99_us));
  return el('p', { class: 'stats', 'data-stats': name, 'data-points': String(h.length),
    'data-iops': String(last ? iops[iops.length - 1] : 0), 'data-p99-us': String(last ? lat[lat.length - 1] : 0) },
    el('span', { class: 'spark-label' }, 'IOPS'), sparkline(iops, `IOPS of ${name}, last ${h.length} reports`, 'var(--bar)'), ' ',
    el('span', { class: 'spark-label' }, 'p99'), sparkline(lat, `p99 latency of ${name}, last ${h.length} reports`, 'var(--warn)'), ' ', text + throttled);
}

// sparkline draws values as an inline SVG line.
function sparkline(values, label, color) {
  const ns = 'http://www.w3.org/2000/svg';
  const w = 120, hgt = 24;
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', w);
  svg.setAttribute('height', hgt);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.setAttribute('class', 'spark');
  const max = Math.max(1, ...values);
  // The newest figure at the right edge, one step per report.
  const x = (i) => w - 3 - ((values.length - 1 - i) * (w - 3)) / (HISTORY - 1);
  const y = (v) => hgt - 2 - (v / max) * (hgt - 4);
  const pts = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', pts);
  line.setAttribute('fill', 'none');
  line.style.stroke = color;
  line.setAttribute('stroke-width', '1.5');
  svg.append(line);
  if (values.length) {
    const dot = document.createElementNS(ns, 'circle');
    dot.setAttribute('cx', x(values.length - 1).toFixed(1));
    dot.setAttribute('cy', y(values[values.length - 1]).toFixed(1));
    dot.setAttribute('r', '2');
    dot.style.fill = color;
    svg.append(dot);
  }
  return svg;
}

async function pollStats(volumes) {
  await Promise.all(volumes.map(async (v) => {
    try {
      const r = await api('/api/v1/volumes/' + encodeURIComponent(v.name) + '/stats');
      if (!r.stats || !r.reported_at) return;
      const h = history.get(v.name) || [];
      if (h.length && h[h.length - 1].at === r.reported_at) return;
      h.push({ ...r.stats, at: r.reported_at });
      history.set(v.name, h.slice(-HISTORY));
    } catch (e) { /* figures are optional */ }
  }));
}

// volumeActions is the admin's attach, resize and delete of a volume,
// through the API as the CLI does.
function volumeActions(v) {
  const msg = el('span', { class: 'error', role: 'alert', 'data-action-error': v.name }, actionErrors.get(v.name) || '');
  const run = async (what, f) => {
    actionErrors.delete(v.name);
    msg.textContent = '';
    try {
      await f();
    } catch (e) {
      actionErrors.set(v.name, `${what}: ${e.message}`); // kept across redraws
      msg.textContent = actionErrors.get(v.name);
    }
    refresh();
  };
  const host = el('input', { 'aria-label': `host to attach ${v.name} to`, placeholder: 'host', size: 8, 'data-attach-host': v.name });
  const size = el('input', { 'aria-label': `new size of ${v.name}`, placeholder: 'new size', size: 8, 'data-resize-size': v.name });
  const f = el('div', { class: 'actions' },
    host, el('button', { type: 'button', 'data-attach': v.name, onclick: () => run('attach', () =>
      api(`/api/v1/volumes/${encodeURIComponent(v.name)}/attach`, { method: 'POST', body: JSON.stringify({ host: host.value.trim() }) })) }, 'Attach'),
    ' ', size, el('button', { type: 'button', 'data-resize': v.name, onclick: () => run('resize', () =>
      api(`/api/v1/volumes/${encodeURIComponent(v.name)}/resize`, { method: 'POST', body: JSON.stringify({ size_bytes: parseSize(size.value) }) })) }, 'Resize'),
    ' ', el('button', { type: 'button', 'data-delete': v.name, onclick: () => run('delete', async () => {
      if (!window.confirm(`Delete volume ${v.name} and its data?`)) return;
      await api(`/api/v1/volumes/${encodeURIComponent(v.name)}`, { method: 'DELETE' });
    }) }, 'Delete'),
    ' ', msg);
  return f;
}

function renderServers(servers, hosts) {
  const drain = (s) => (!s.draining ? '' : s.members > 0 ? `, draining (${s.members} members left)` : ', drained');
  const rows = servers.map((s) => el('tr', { 'data-server': s.name, 'data-state': s.state },
    el('td', {}, s.name), el('td', { class: s.state === 'online' ? 'healthy' : 'degraded' }, s.state + (s.full ? ', full' : '') + drain(s)),
    el('td', {}, s.fault_domain), el('td', {}, String(s.members)), el('td', {}, String(s.chunks)),
    el('td', {}, bar('Used', s.capacity_bytes - s.free_bytes, s.capacity_bytes))));
  const hrows = hosts.map((h) => el('tr', {}, el('td', {}, h.name), el('td', {}, h.state), el('td', {}, h.iscsi_addr)));
  $('#server-list').replaceChildren(
    table(['Chunkserver', 'State', 'Fault domain', 'Members', 'Chunks', 'Capacity'], rows, 'Chunkservers'),
    table(['Host', 'State', 'iSCSI portal'], hrows, 'Hosts'));
}

// GROUP names what happened to the things of one server, for the kinds
// whose events of one cause are folded into one line (as chunkraid events
// does, api.GroupEvents).
const GROUP = {
  member_degraded: 'members degraded', resync_started: 'members resyncing', resync_done: 'members resynced',
  member_in_sync: 'members in sync again without a resync', rebuild_done: 'members rebuilt',
  member_replaced: 'members replaced by new chunks, being rebuilt', replace_blocked: 'members that no chunkserver can take yet',
  chunk_failed: 'chunks failed', volume_attached: 'volumes attached', host_failover: 'volumes failed over to this host',
};

// groupEvents folds events (oldest first) of one kind about one server,
// each within a minute of the previous, into one group.
export function groupEvents(evs) {
  const out = [];
  const open = new Map();
  for (const e of evs) {
    const key = e.kind + ' ' + (e.server || '');
    const g = open.get(key);
    if (g && GROUP[e.kind] && e.server && new Date(e.time) - new Date(g.last) <= 60000) {
      g.events.push(e);
      g.last = e.time;
      g.bytes += e.bytes || 0;
      if (e.volume) g.volumes.set(e.volume, (g.volumes.get(e.volume) || 0) + 1);
      continue;
    }
    const ng = { kind: e.kind, server: e.server || '', first: e.time, last: e.time, bytes: e.bytes || 0, volumes: new Map(), events: [e] };
    if (e.volume) ng.volumes.set(e.volume, 1);
    out.push(ng);
    if (GROUP[e.kind] && e.server) open.set(key, ng);
  }
  return out;
}

function summary(g) {
  if (g.events.length === 1) return g.events[0].message;
  let s = `${g.server}: ${g.events.length} ${GROUP[g.kind]}`;
  if (g.bytes > 0) s += `, ${bytes(g.bytes)} copied`;
  const secs = Math.round((new Date(g.last) - new Date(g.first)) / 1000);
  if (secs > 0) s += ` in ${secs}s`;
  const vols = [...g.volumes.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  if (vols.length) {
    const parts = vols.slice(0, 3).map(([v, n]) => `volume ${v}: ${n}`);
    if (vols.length > 3) parts.push(`${vols.length - 3} more volumes`);
    s += ` (${parts.join(', ')})`;
  }
  return s;
}

async function renderEvents() {
  const q = new URLSearchParams({ limit: '500' });
  if ($('#e-kind').value.trim()) q.set('kind', $('#e-kind').value.trim());
  if ($('#e-server').value.trim()) q.set('server', $('#e-server').value.trim());
  const evs = await api('/api/v1/events?' + q);
  const rows = groupEvents(evs).reverse().map((g) => {
    const msg = el('td', { 'data-event-group': g.kind + ' ' + g.server, 'data-count': String(g.events.length) });
    if (g.events.length === 1) {
      msg.append(summary(g));
    } else {
      // The detail of every event, one click away.
      const d = el('details', {}, el('summary', {}, summary(g)));
      for (const e of g.events) d.append(el('div', {}, `${new Date(e.time).toLocaleTimeString()} ${e.message}`));
      msg.append(d);
    }
    const subject = g.events.length === 1 ? g.events[0].subject : `${g.server} ×${g.events.length}`;
    return el('tr', {}, el('td', {}, new Date(g.first).toLocaleString()), el('td', {}, g.kind), el('td', {}, subject), msg);
  });
  $('#event-list').replaceChildren(table(['Time', 'Kind', 'Subject', 'What happened'], rows, 'Newest first; the events of one cause are one line'));
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [cluster, volumes, servers, hosts] = await Promise.all([
      api('/api/v1/cluster'), api('/api/v1/volumes'), api('/api/v1/chunkservers'), api('/api/v1/hosts')]);
    renderOverview(cluster, volumes, servers);
    busy = volumes.some((v) => v.sets.some((st) => st.dirty_bytes > 0 || st.reconciling ||
      st.members.some((m) => m.state !== 'in_sync')));
    if (Date.now() - lastStats > 4000) {
      lastStats = Date.now();
      await pollStats(volumes);
    }
    if (!editing()) renderVolumes(volumes);
    renderServers(servers, hosts);
    if (location.hash === '#events') await renderEvents();
    $('#who').classList.remove('error');
  } catch (e) {
    if (e.status === 401) return signOut('the token was refused: sign in again');
    $('#who').textContent = 'cannot reach the metaserver: ' + e.message;
    $('#who').classList.add('error');
    busy = true; // try again soon
  }
  // Changes come by the long poll (watch); progress and figures, which are
  // not events, by reading again every few seconds while there are any.
  timer = setTimeout(refresh, busy ? 2000 : 5000);
}

// watch long-polls the cluster's change version and reads the cluster
// again whenever it moves: an idle page waits in one request.
async function watch(run) {
  let version = -1;
  while (run === watchRun && token) {
    try {
      const c = await api(`/api/v1/changes?after=${version}&wait=25s`);
      if (c.version !== version) {
        if (version !== -1) refresh();
        version = c.version;
      }
    } catch (e) {
      if (e.status === 401) return signOut('the token was refused: sign in again');
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

function show() {
  const page = (location.hash || '#overview').slice(1);
  for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== page;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (page === 'events') renderEvents().catch(() => {});
}

// A page chosen from the navigation takes the focus to its heading, so a
// keyboard or screen reader user goes on from there.
function showAndFocus() {
  show();
  const h = document.querySelector(`#${(location.hash || '#overview').slice(1)} h2`);
  if (h && !$('#nav').hidden) h.focus();
}

async function signIn(t) {
  token = t;
  const me = await api('/api/v1/whoami');
  role = me.role;
  sessionStorage.setItem(KEY, token);
  $('#signin').hidden = true;
  $('#nav').hidden = false;
  $('#signout').hidden = false;
  $('#who').textContent = `Signed in as ${me.name} (${me.role})`;
  $('#create-form').hidden = role !== 'admin';
  showAndFocus(); // the sign-in form, which had the focus, is gone
  refresh();
  watch(++watchRun);
}

function signOut(why) {
  clearTimeout(timer);
  watchRun++;
  token = '';
  sessionStorage.removeItem(KEY);
  for (const s of document.querySelectorAll('.page')) s.hidden = true;
  $('#signin').hidden = false;
  $('#nav').hidden = true;
  $('#signout').hidden = true;
  $('#who').textContent = '';
  $('#signin-error').textContent = why || '';
}

$('#signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('#signin-error').textContent = '';
  try {
    await signIn($('#token').value.trim());
    $('#token').value = '';
  } catch (e) {
    token = '';
    $('#signin-error').textContent = e.status === 401 ? 'the metaserver does not know this token' : e.message;
  }
});

$('#signout').addEventListener('click', () => signOut());
window.addEventListener('hashchange', showAndFocus);
for (const id of ['#e-kind', '#e-server']) $(id).addEventListener('change', () => renderEvents().catch(() => {}));

$('#create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('#create-error').textContent = '';
  $('#create-ok').textContent = '';
  try {
    const req = { name: $('#c-name').value.trim(), size_bytes: parseSize($('#c-size').value), layout: $('#c-layout').value };
    if ($('#c-host').value.trim()) req.host = $('#c-host').value.trim();
    const v = await api('/api/v1/volumes', { method: 'POST', body: JSON.stringify(req) });
    $('#create-ok').textContent = `volume ${v.name} created: ${bytes(v.size_bytes)}, ${v.layout}, ${v.sets.length} sets`;
    refresh();
  } catch (e) {
    $('#create-error').textContent = e.message;
  }
});

if (token) signIn(token).catch(() => signOut());
