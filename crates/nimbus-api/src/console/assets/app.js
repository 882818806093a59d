// The Nimbus console: one page, hash routes, no framework. Every value shown goes into the
// DOM as text (never as HTML), and every request is a call of the public APIs (/api/v1 Lambda,
// /v1 native) with the session cookie and the session's CSRF token.
'use strict';

const S = { session: null, timer: null };

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v === true) e.setAttribute(k, '');
    else if (v !== false && v != null) e.setAttribute(k, v);
  }
  for (const kid of kids.flat(Infinity)) if (kid != null) e.append(kid instanceof Node ? kid : String(kid));
  return e;
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && S.session) headers['X-CSRF-Token'] = S.session.csrf_token;
  const r = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  let v = null;
  try { v = await r.json(); } catch (_) { v = null; }
  if (r.status === 401 && !path.startsWith('/console/session')) { showSignIn(); throw new Error('Signed out.'); }
  if (!r.ok) {
    const e = v && v.error;
    throw new Error((e && (e.message || e.code)) || ('HTTP ' + r.status));
  }
  return v;
}

const can = (p) => !!S.session && (S.session.permissions.includes(p) || S.session.permissions.includes('ADMIN'));
const usd = (cents) => '$' + (cents / 100).toFixed(2);
// Under a cent, four decimals: a few minutes of a small instance are not $0.00.
const microsUsd = (m) => '$' + (m / 1e6).toFixed(m > 0 && m < 10000 ? 4 : 2);
const gib = (b) => (b / 1073741824).toFixed(2) + ' GiB';

function table(cols, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty || 'None yet.');
  return h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c[0])))),
    h('tbody', {}, rows.map((r) => h('tr', {}, cols.map((c) => h('td', {}, c[1](r))))))));
}

function statusCell(s) { return h('span', { class: 'status status-' + s }, s); }

function setPage(title, ...kids) {
  const page = document.getElementById('page');
  page.replaceChildren(h('h1', {}, title), ...kids.flat(2));
  document.title = title + ' · Nimbus console';
}

function errorBox(e) { return h('p', { class: 'error', role: 'alert' }, String(e.message || e)); }

// A confirmation in a <dialog> of the page (reachable by keyboard; no browser pop-up).
function confirmDialog(text, action) {
  return new Promise((resolve) => {
    const d = h('dialog', { 'aria-label': 'Confirm' },
      h('p', {}, text),
      h('div', { class: 'toolbar' },
        h('button', { type: 'button', class: 'danger', id: 'confirm-yes', on: { click: () => { d.close(); d.remove(); resolve(true); } } }, action),
        h('button', { type: 'button', class: 'secondary', on: { click: () => { d.close(); d.remove(); resolve(false); } } }, 'Cancel')));
    document.body.append(d);
    d.showModal();
  });
}

// A generated key pair's private key, offered once as a file (the server keeps no copy).
function privateKeyDownload(k) {
  const url = URL.createObjectURL(new Blob([k.private_key], { type: 'application/x-pem-file' }));
  return h('p', {}, 'Key pair ' + k.name + ' generated. Its private key is shown only now: ',
    h('a', { href: url, download: k.name + '.pem', id: 'private-key-download' }, 'download ' + k.name + '.pem'));
}

// A small form: labelled fields, a submit button, and a status line for its outcome.
function miniForm(id, fields, submitLabel, onSubmit) {
  const status = h('div', { role: 'status', id: id + '-status' });
  const form = h('form', { id }, fields.map(([fid, label, input]) => [h('label', { for: fid }, label), input]),
    h('p', {}, h('button', { type: 'submit', id: id + '-submit' }, submitLabel)), status);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try { await onSubmit(status); } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  return form;
}

// ---- sign-in -------------------------------------------------------------------------------

function showSignIn() {
  S.session = null;
  clearInterval(S.timer);
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('who').textContent = '';
  document.getElementById('page').replaceChildren();
  document.getElementById('signin').hidden = false;
  document.getElementById('api-key').focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = document.getElementById('api-key');
  const err = document.getElementById('signin-error');
  err.textContent = '';
  try {
    const v = await api('POST', '/console/session', { api_key: input.value });
    input.value = '';
    start(v.data);
  } catch (e) { err.textContent = 'Sign-in failed: ' + e.message; }
}

async function signOut() {
  try { await api('DELETE', '/console/session'); } catch (_) { /* signed out either way */ }
  location.hash = '';
  showSignIn();
}

const TENANT_PAGES = [['instances', 'Instances'], ['ssh-keys', 'SSH keys'], ['storage', 'Storage'], ['firewall', 'Firewall'],
  ['clusters', 'Clusters'], ['billing', 'Billing'], ['keys', 'API keys'], ['audit', 'Audit']];
const OPERATOR_PAGES = [['hosts', 'Hosts'], ['orgs', 'Organizations']];

function start(session) {
  S.session = session;
  document.getElementById('signin').hidden = true;
  const pages = session.operator ? OPERATOR_PAGES : TENANT_PAGES;
  document.getElementById('nav').replaceChildren(...pages.map(([id, name]) => h('a', { href: '#/' + id, id: 'nav-' + id }, name)));
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('who').textContent = session.operator ? 'operator' : session.key_prefix + '… (' + session.permissions.join(', ') + ')';
  route();
}

// ---- routing -------------------------------------------------------------------------------

function route() {
  if (!S.session) return;
  clearInterval(S.timer);
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const first = parts[0] || (S.session.operator ? 'hosts' : 'instances');
  for (const a of document.querySelectorAll('nav a')) a.removeAttribute('aria-current');
  const link = document.getElementById('nav-' + first);
  if (link) link.setAttribute('aria-current', 'page');
  const pages = { instances: parts[1] ? () => instancePage(decodeURIComponent(parts[1])) : instancesPage, 'ssh-keys': sshKeysPage,
    storage: storagePage, firewall: firewallPage, clusters: clustersPage, billing: billingPage, keys: keysPage, audit: auditPage,
    hosts: hostsPage, orgs: orgsPage };
  (pages[first] || instancesPage)().catch((e) => document.getElementById('page').append(errorBox(e)));
}

// ---- instances -----------------------------------------------------------------------------

async function instancesPage() {
  const filter = h('input', { id: 'filter', type: 'search', placeholder: 'name, status, type or region' });
  const list = h('div', { id: 'instances' });
  const bar = h('div', { class: 'toolbar' }, h('div', {}, h('label', { for: 'filter' }, 'Filter'), filter));
  if (can('CREATE')) bar.append(h('button', { type: 'button', id: 'launch', on: { click: launchDialog } }, 'Launch instance'));
  setPage('Instances', bar, list);
  let rows = [];
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = rows.filter((i) => !q || [i.name, i.status, i.instance_type.name, i.region.name].some((f) => (f || '').toLowerCase().includes(q)));
    list.replaceChildren(table([
      ['Name', (i) => h('a', { href: '#/instances/' + encodeURIComponent(i.id), class: 'instance-link' }, i.name || i.id)],
      ['Status', (i) => statusCell(i.status)], ['Type', (i) => i.instance_type.name], ['Region', (i) => i.region.name],
      ['IP', (i) => i.ip || '—'], ['Private IP', (i) => i.private_ip || '—']], shown, 'No instances. Launch one.'));
  };
  filter.addEventListener('input', render);
  const load = async () => { rows = (await api('GET', '/api/v1/instances')).data; render(); };
  await load();
  // Live status: the list is read again every 2 s while the page is open.
  S.timer = setInterval(() => load().catch(() => {}), 2000);
}

async function launchDialog() {
  const [types, keys, fss] = await Promise.all([api('GET', '/api/v1/instance-types'), api('GET', '/api/v1/ssh-keys'), api('GET', '/api/v1/file-systems')]);
  const avail = Object.values(types.data).filter((t) => t.regions_with_capacity_available.length)
    .sort((a, b) => a.instance_type.price_cents_per_hour - b.instance_type.price_cents_per_hour);
  const err = h('p', { class: 'error', role: 'alert' });
  const out = h('div', { id: 'launch-result' });
  const typeSel = h('select', { id: 'launch-type', required: true },
    avail.map((t) => h('option', { value: t.instance_type.name }, t.instance_type.name + ' — ' + t.instance_type.description + ' — ' + usd(t.instance_type.price_cents_per_hour) + '/h')));
  const regionSel = h('select', { id: 'launch-region', required: true });
  const fsBox = h('div', { id: 'launch-fs' });
  const fillRegions = () => {
    const t = avail.find((x) => x.instance_type.name === typeSel.value);
    regionSel.replaceChildren(...(t ? t.regions_with_capacity_available : []).map((r) => h('option', { value: r.name }, r.name + ' (' + r.description + ')')));
    fillFs();
  };
  const fillFs = () => {
    const here = fss.data.filter((f) => f.region.name === regionSel.value);
    fsBox.replaceChildren(...(here.length ? here.map((f) => h('label', {}, h('input', { type: 'checkbox', value: f.name, class: 'fs inline' }), ' ' + f.name))
      : [h('span', { class: 'muted' }, 'No file systems in this region.')]));
  };
  typeSel.addEventListener('change', fillRegions);
  regionSel.addEventListener('change', fillFs);
  const keySel = h('select', { id: 'launch-key' }, h('option', { value: '' }, 'Generate a new key pair'),
    keys.data.map((k) => h('option', { value: k.name }, k.name)));
  const newKey = h('input', { id: 'launch-key-name', value: 'console-' + Date.now().toString(36) });
  const name = h('input', { id: 'launch-name', placeholder: 'optional' });
  const userData = h('textarea', { id: 'launch-user-data', rows: 3, placeholder: '#cloud-config (optional)' });
  const submit = h('button', { type: 'submit', id: 'launch-submit' }, 'Launch');
  const form = h('form', { method: 'dialog' },
    h('h2', {}, 'Launch an instance'),
    avail.length ? [] : h('p', { class: 'error' }, 'No instance type has capacity now.'),
    h('label', { for: 'launch-type' }, 'Instance type (only types with capacity)'), typeSel,
    h('label', { for: 'launch-region' }, 'Region'), regionSel,
    h('label', { for: 'launch-key' }, 'SSH key'), keySel,
    h('label', { for: 'launch-key-name' }, 'Name of the generated key'), newKey,
    h('label', { for: 'launch-name' }, 'Instance name'), name,
    h('label', { for: 'launch-user-data' }, 'User data'), userData,
    h('fieldset', {}, h('legend', {}, 'File systems'), fsBox),
    err, out,
    h('div', { class: 'toolbar' }, submit, h('button', { type: 'button', class: 'secondary', id: 'launch-close', on: { click: () => { d.close(); d.remove(); route(); } } }, 'Close')));
  keySel.addEventListener('change', () => { newKey.disabled = !!keySel.value; });
  const d = h('dialog', { id: 'launch-dialog', 'aria-label': 'Launch an instance' }, form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    submit.disabled = true;
    try {
      let keyName = keySel.value;
      if (!keyName) {
        const k = (await api('POST', '/api/v1/ssh-keys', { name: newKey.value.trim() })).data;
        keyName = k.name;
        out.append(privateKeyDownload(k));
      }
      const body = { region_name: regionSel.value, instance_type_name: typeSel.value, ssh_key_names: [keyName],
        file_system_names: [...fsBox.querySelectorAll('input.fs:checked')].map((c) => c.value) };
      if (name.value.trim()) body.name = name.value.trim();
      if (userData.value.trim()) body.user_data = userData.value;
      const r = await api('POST', '/api/v1/instance-operations/launch', body);
      const id = r.data.instance_ids[0];
      out.append(h('p', { id: 'launched' }, 'Launched ', h('a', { href: '#/instances/' + id, on: { click: () => { d.close(); d.remove(); } } }, id), '.'));
    } catch (e) { err.textContent = e.message; }
    submit.disabled = false;
  });
  document.body.append(d);
  fillRegions();
  d.showModal();
}

function chart(label, points, value, unit) {
  let vals = points.map(value).filter((v) => v != null);
  if (vals.length === 1) vals = [vals[0], vals[0]]; // one sample: a flat line, not nothing
  const max = Math.max(1, ...vals);
  const w = 300, hh = 100;
  const pts = vals.map((v, i) => ((vals.length > 1 ? i / (vals.length - 1) : 0) * w).toFixed(1) + ',' + (hh - (v / max) * hh).toFixed(1)).join(' ');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 ' + w + ' ' + hh);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label + ' over the last hour');
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', pts);
  svg.append(line);
  const last = vals.length ? vals[vals.length - 1] : null;
  return h('div', { class: 'card metric' }, h('h3', {}, label), svg,
    h('p', { class: 'muted' }, last == null ? 'no samples yet' : 'latest ' + unit(last) + ', peak ' + unit(max)));
}

async function instancePage(id) {
  const i = (await api('GET', '/api/v1/instances/' + encodeURIComponent(id))).data;
  const actions = h('div', { class: 'toolbar' });
  const msg = h('p', { role: 'status', id: 'action-status' });
  const act = (label, idn, fn, danger) => h('button', { type: 'button', id: idn, class: danger ? 'danger' : 'secondary', on: { click: async () => {
    if (!(await confirmDialog(label + ' ' + (i.name || i.id) + '?', label))) return;
    try { await fn(); msg.textContent = label + ' requested.'; } catch (e) { msg.textContent = e.message; }
    refresh();
  } } }, label);
  if (can('EDIT')) actions.append(act('Restart', 'restart', () => api('POST', '/api/v1/instance-operations/restart', { instance_ids: [i.id] })),
    act('Stop', 'stop', () => api('POST', '/v1/instances/' + i.id + '/stop')), act('Start', 'start', () => api('POST', '/v1/instances/' + i.id + '/start')));
  if (can('DELETE')) actions.append(act('Terminate', 'terminate', () => api('POST', '/api/v1/instance-operations/terminate', { instance_ids: [i.id] }), true));
  const status = h('span', { id: 'instance-status' });
  const sshLine = h('pre', { id: 'ssh-line' });
  const facts = h('div', { class: 'cards' });
  const metrics = h('div', { class: 'cards', id: 'metrics' });
  setPage(i.name || i.id, h('p', {}, 'Status: ', status), h('h2', {}, 'Connect'), sshLine, actions, msg, facts, h('h2', {}, 'Metrics (last hour)'), metrics);
  const refresh = async () => {
    const cur = (await api('GET', '/api/v1/instances/' + encodeURIComponent(id))).data;
    status.replaceChildren(statusCell(cur.status));
    for (const [b, ok] of [['stop', cur.status === 'active'], ['start', cur.status === 'stopped'], ['restart', cur.status === 'active'],
      ['terminate', cur.status !== 'terminating' && cur.status !== 'terminated']]) {
      const el = document.getElementById(b);
      if (el) el.disabled = !ok;
    }
    sshLine.textContent = cur.ip ? 'ssh ubuntu@' + cur.ip : 'no address yet';
    facts.replaceChildren(...[['ID', cur.id], ['Type', cur.instance_type.name + ' — ' + cur.instance_type.description], ['Region', cur.region.name],
      ['Hostname', cur.hostname], ['Private IP', cur.private_ip || '—'], ['SSH keys', (cur.ssh_key_names || []).join(', ')],
      ['File systems', (cur.file_system_names || []).join(', ') || '—']].map(([k, v]) => h('div', { class: 'card' }, h('h3', {}, k), h('span', {}, v || '—'))));
    try {
      const m = (await api('GET', '/v1/instances/' + encodeURIComponent(id) + '/metrics?step=5')).data;
      const p = m.points;
      const cards = [chart('CPU', p, (x) => x.cpu_millicores / 1000, (v) => v.toFixed(2) + ' cores'),
        chart('Memory', p, (x) => x.memory_bytes, gib),
        chart('Network in', p, (x) => x.net_rx_bytes_per_sec, (v) => (v / 1024).toFixed(1) + ' KiB/s'),
        chart('Network out', p, (x) => x.net_tx_bytes_per_sec, (v) => (v / 1024).toFixed(1) + ' KiB/s')];
      if (p.some((x) => x.gpu_utilization_pct != null)) cards.push(chart('GPU', p, (x) => x.gpu_utilization_pct, (v) => v.toFixed(0) + ' %'));
      metrics.replaceChildren(...cards);
    } catch (e) { metrics.replaceChildren(errorBox(e)); }
  };
  await refresh();
  S.timer = setInterval(() => refresh().catch(() => {}), 3000);
}

// ---- the other tenant pages ----------------------------------------------------------------

async function sshKeysPage() {
  const keys = (await api('GET', '/api/v1/ssh-keys')).data;
  const name = h('input', { id: 'key-name' });
  const pub = h('textarea', { id: 'key-public', rows: 2, placeholder: 'ssh-ed25519 AAAA… (empty: generate a pair)' });
  const out = h('div', { role: 'status' });
  const form = h('form', {}, h('label', { for: 'key-name' }, 'Name'), name, h('label', { for: 'key-public' }, 'Public key'), pub,
    h('p', {}, h('button', { type: 'submit' }, 'Add key')), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const body = { name: name.value.trim() };
      if (pub.value.trim()) body.public_key = pub.value.trim();
      const k = (await api('POST', '/api/v1/ssh-keys', body)).data;
      if (k.private_key) {
        out.replaceChildren(privateKeyDownload(k));
      } else sshKeysPage();
    } catch (e) { out.replaceChildren(errorBox(e)); }
  });
  setPage('SSH keys', table([['Name', (k) => k.name], ['Public key', (k) => h('code', {}, k.public_key.slice(0, 60) + '…')],
    ['', (k) => can('DELETE') ? h('button', { type: 'button', class: 'secondary', 'aria-label': 'Delete key ' + k.name, on: { click: async () => {
      if (await confirmDialog('Delete key ' + k.name + '?', 'Delete')) { await api('DELETE', '/api/v1/ssh-keys/' + k.id); sshKeysPage(); } } } }, 'Delete') : '']], keys),
  can('CREATE') ? [h('h2', {}, 'Add or generate a key'), form] : []);
}

async function storagePage() {
  const [fs, vols, snaps] = await Promise.all([api('GET', '/api/v1/file-systems'), api('GET', '/v1/volumes'), api('GET', '/v1/snapshots')]);
  const fsName = h('input', { id: 'fs-name', required: true });
  const fsRegion = h('input', { id: 'fs-region', value: 'us-east-1', required: true });
  const create = can('CREATE') ? [h('h2', {}, 'Create a file system'), miniForm('fs-form', [['fs-name', 'Name', fsName], ['fs-region', 'Region', fsRegion]],
    'Create file system', async () => { await api('POST', '/api/v1/filesystems', { name: fsName.value.trim(), region: fsRegion.value.trim() }); storagePage(); })] : [];
  setPage('Storage',
    h('h2', {}, 'File systems'), table([['Name', (f) => f.name], ['Region', (f) => f.region.name], ['In use', (f) => f.is_in_use ? 'yes' : 'no'],
      ['Used', (f) => f.bytes_used == null ? '—' : gib(f.bytes_used)]], fs.data), create,
    h('h2', {}, 'Volumes'), table([['Name', (v) => v.name], ['Region', (v) => v.region], ['Size', (v) => v.size_gib + ' GiB'],
      ['Status', (v) => statusCell(v.status)], ['Instance', (v) => v.instance_id || '—']], vols.data),
    h('h2', {}, 'Snapshots'), table([['Name', (s) => s.name], ['Of', (s) => s.source_type + ' ' + s.source_id], ['Size', (s) => s.size_gib + ' GiB'],
      ['Status', (s) => statusCell(s.status)], ['Created', (s) => s.created_at]], snaps.data));
}

async function firewallPage() {
  const sets = (await api('GET', '/api/v1/firewall-rulesets')).data;
  const rule = (r) => r.protocol + ' ' + (r.port_range ? r.port_range.join('–') : 'all') + ' from ' + r.source_network;
  setPage('Firewall rulesets', table([['Name', (s) => s.name], ['Region', (s) => (s.region && s.region.name) || '—'],
    ['Rules', (s) => h('ul', {}, (s.rules || []).map((r) => h('li', {}, rule(r))))], ['Instances', (s) => (s.instance_ids || []).length]], sets));
}

async function clustersPage() {
  const list = (await api('GET', '/api/v1/clusters')).clusters || [];
  const nodes = await Promise.all(list.map((c) => api('GET', '/api/v1/clusters/' + encodeURIComponent(c.id) + '/nodes').then((v) => v.nodes, () => [])));
  setPage('Clusters', table([['Name', (c) => c.name], ['Plan', (c) => c.plan], ['State', (c) => statusCell(c.state)],
    ['Regions', (c) => (c.regions || []).map((r) => r.name).join(', ')],
    ['Nodes', (c) => h('ul', { class: 'nodes' }, nodes[list.indexOf(c)].map((n) => h('li', {}, n.name + ' (' + n.region_name + '): ' + n.status)))],
    ['ID', (c) => c.id]], list));
}

async function billingPage() {
  const [est, inv, acct] = await Promise.all([api('GET', '/v1/billing/estimate'), api('GET', '/v1/billing/invoices'), api('GET', '/v1/account')]);
  // Usage by day for the last 7 days, by instance type: one usage query per day.
  const days = [];
  const today = new Date(new Date().toISOString().slice(0, 10) + 'T00:00:00Z');
  for (let k = 6; k >= 0; k--) days.push(new Date(today.getTime() - k * 86400000));
  const usage = await Promise.all(days.map((d) => {
    const end = new Date(Math.min(d.getTime() + 86400000, Date.now()));
    return api('GET', '/v1/billing/usage?start=' + d.toISOString().replace(/\.\d+Z$/, 'Z') + '&end=' + end.toISOString().replace(/\.\d+Z$/, 'Z')).then((u) => u.data);
  }));
  const max = Math.max(1, ...usage.map((u) => u.total_micros));
  const bars = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  bars.setAttribute('viewBox', '0 0 700 120');
  bars.setAttribute('class', 'chart bars');
  bars.setAttribute('preserveAspectRatio', 'none');
  bars.setAttribute('role', 'img');
  bars.setAttribute('aria-label', 'Spend per day, last 7 days');
  usage.forEach((u, k) => {
    const r = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
    const hgt = (u.total_micros / max) * 100;
    r.setAttribute('x', String(k * 100 + 10)); r.setAttribute('width', '80'); r.setAttribute('y', String(110 - hgt)); r.setAttribute('height', String(Math.max(hgt, 0.5)));
    bars.append(r);
  });
  const bySku = {};
  for (const u of usage) for (const l of u.lines) bySku[l.sku] = (bySku[l.sku] || 0) + l.amount_micros;
  const a = acct.data;
  const limit = h('input', { id: 'limit-usd', type: 'number', min: '0', step: '1', value: a.spend_limit_cents == null ? '' : String(a.spend_limit_cents / 100) });
  const action = h('select', { id: 'limit-action' }, ['notify', 'stop'].map((x) => h('option', { value: x, selected: x === a.spend_limit_action }, x)));
  const limitForm = can('EDIT') ? [h('h2', {}, 'Spend limit'), miniForm('limit-form', [['limit-usd', 'Monthly limit in US dollars (0: none)', limit],
    ['limit-action', 'When it is reached', action]], 'Save limit', async (st) => {
    await api('PATCH', '/v1/account', { spend_limit_cents: Math.round(Number(limit.value || 0) * 100), spend_limit_action: action.value });
    st.replaceChildren(h('p', {}, 'Saved.'));
  })] : [];
  setPage('Billing',
    h('div', { class: 'cards' },
      h('div', { class: 'card' }, h('h3', {}, 'Month to date'), microsUsd(est.data.month_to_date_micros)),
      h('div', { class: 'card' }, h('h3', {}, 'Projected this month'), microsUsd(est.data.projected_month_total_micros)),
      h('div', { class: 'card' }, h('h3', {}, 'Spend limit'), a.spend_limit_cents == null ? 'none' : usd(a.spend_limit_cents) + ' (' + a.spend_limit_action + ')')),
    h('h2', {}, 'Usage by day (last 7 days)'), bars,
    h('p', { class: 'muted' }, days.map((d, k) => d.toISOString().slice(5, 10) + ' ' + microsUsd(usage[k].total_micros)).join(' · ')),
    h('h2', {}, 'By type (last 7 days)'), table([['Type', (r) => r[0]], ['Amount', (r) => microsUsd(r[1])]], Object.entries(bySku)),
    h('h2', {}, 'Invoices'), table([['Period', (i) => i.period], ['Status', (i) => i.status], ['Total', (i) => '$' + i.total_usd]], inv.data), limitForm);
}

async function keysPage() {
  const [keys, sas] = await Promise.all([api('GET', '/v1/account/api-keys'), api('GET', '/v1/service-accounts')]);
  const name = h('input', { id: 'new-key-name', required: true });
  const perms = h('select', { id: 'new-key-perms', multiple: true, size: 5 }, ['READ', 'CREATE', 'EDIT', 'DELETE', 'ADMIN'].map((p) => h('option', { value: p, selected: p === 'READ' }, p)));
  const create = can('ADMIN') ? [h('h2', {}, 'Create an API key'), miniForm('key-form', [['new-key-name', 'Name', name], ['new-key-perms', 'Permissions', perms]],
    'Create key', async (st) => {
      const k = (await api('POST', '/v1/account/api-keys', { name: name.value.trim(), permissions: [...perms.selectedOptions].map((o) => o.value) })).data;
      st.replaceChildren(h('p', {}, 'Key ' + k.name + ' created. Copy its secret now; it is not shown again:'), h('pre', { id: 'new-key-secret' }, k.secret));
    })] : [];
  setPage('API keys and service accounts',
    h('h2', {}, 'API keys'), table([['Name', (k) => k.name], ['Prefix', (k) => h('code', {}, k.prefix)], ['Permissions', (k) => k.permissions.join(', ')],
      ['Created', (k) => k.created_at], ['Expires', (k) => k.expires_at || 'never']], keys.data), create,
    h('h2', {}, 'Service accounts'), table([['Name', (s) => s.name], ['Permissions', (s) => (s.permissions || []).join(', ')], ['Created', (s) => s.created_at]], sas.data));
}

async function auditPage() {
  const v = (await api('GET', '/api/v1/audit-events')).data;
  // The API pages oldest first; the newest are what a person looks for.
  const events = v.events.slice().reverse();
  setPage('Audit events', table([['Time', (e) => e.event_time], ['Action', (e) => e.action], ['Resource', (e) => e.resource_name],
    ['By', (e) => e.request_api_key_lrn || e.actor_lrn || '—']], events),
  v.page_token ? h('p', { class: 'muted' }, 'Older events: the API pages them (page_token).') : []);
}

// ---- operator pages ------------------------------------------------------------------------

async function hostsPage() {
  const load = async () => {
    const hosts = (await api('GET', '/console/api/hosts')).data;
    return table([['Host', (x) => h('span', {}, x.name, h('br'), h('small', { class: 'muted' }, x.id))], ['Region', (x) => x.region],
      ['Status', (x) => statusCell(x.status)], ['Driver', (x) => x.driver],
      ['vCPUs free', (x) => x.free.vcpus + ' / ' + x.total.vcpus], ['Memory free', (x) => (x.free.memory_mib / 1024).toFixed(0) + ' / ' + (x.total.memory_mib / 1024).toFixed(0) + ' GiB'],
      ['GPUs', (x) => x.gpus.length ? h('ul', {}, x.gpus.map((g) => h('li', {},
        '#' + g.index + ' ' + g.model + (g.instance_id ? ' (in use)' : g.mig_devices.length ? ' (MIG: ' + g.mig_devices.length + ' devices)' : g.clean ? ' (free)' : ' (being checked)') +
        (g.health === 'ok' ? '' : ' — ' + g.health + (g.reasons.length ? ': ' + g.reasons[0] : ''))))) : '—'],
      ['Heartbeat', (x) => x.heartbeat_age_s + ' s ago']], hosts, 'No hosts registered.');
  };
  const box = h('div', { id: 'hosts' }, await load());
  setPage('Hosts', box);
  S.timer = setInterval(async () => { try { box.replaceChildren(await load()); } catch (_) { /* next tick */ } }, 3000);
}

async function orgsPage() {
  const orgs = (await api('GET', '/console/api/orgs')).data;
  setPage('Organizations', table([['Name', (o) => o.name], ['Email', (o) => o.email], ['Plan', (o) => o.plan],
    ['Instances', (o) => o.instances + ' / ' + o.instances_quota], ['Spend limit', (o) => o.spend_limit_cents == null ? '—' : usd(o.spend_limit_cents)], ['Created', (o) => o.created_at]], orgs));
}

// ---- start ---------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signin-form').addEventListener('submit', signIn);
  document.getElementById('logout').addEventListener('click', signOut);
  try {
    const v = await api('GET', '/console/session');
    if (v.data) start(v.data); else showSignIn();
  } catch (_) { showSignIn(); }
});
