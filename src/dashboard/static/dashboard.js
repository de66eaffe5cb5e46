// The dashboard page: reads /api/ and draws tables and inline SVG charts. Every text that comes
// from a log or a config goes in through textContent, never as markup.

const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

/** An element with text content and attributes. */
function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** A log name: shown whole up to a width, then cut with an ellipsis; the whole name on hover. */
function nameEl(tag, name, attrs = {}) {
  const e = el(tag, name, { ...attrs, title: name });
  e.classList.add('name');
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function pct(x) {
  return `${(x * 100).toFixed(1)}%`;
}

function age(seconds) {
  if (seconds === undefined) return 'never';
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

function short(hex) {
  return hex ? `${hex.slice(0, 12)}…` : '';
}

async function api(path) {
  const r = await fetch(path, { headers: { accept: 'application/json' } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function setStatus(text) {
  $('status').textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Overview.

/** A line chart of [time, size] points, as inline SVG. */
function growthChart(history, name) {
  const w = 160;
  const h = 40;
  const s = svg('svg', { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: 'chart', role: 'img' });
  const title = svg('title');
  title.textContent = `${name}: size over time`;
  s.append(title);
  if (history.length === 0) return s;
  const t0 = history[0][0];
  const t1 = Math.max(history[history.length - 1][0], t0 + 1);
  const max = Math.max(1, ...history.map((p) => p[1]));
  const pts = history.map(
    ([t, n]) => `${((t - t0) / (t1 - t0)) * (w - 4) + 2},${h - 2 - (n / max) * (h - 4)}`,
  );
  if (history.length === 1) pts.push(`${w - 2},${pts[0].split(',')[1]}`);
  s.append(svg('polyline', { points: pts.join(' '), fill: 'none', class: 'line' }));
  return s;
}

function stateCell(log) {
  const td = el('td');
  td.append(el('span', log.state, { class: `state ${log.state}` }));
  if (log.check) td.append(el('div', log.check, { class: 'check' }));
  if (log.reason) td.title = log.reason;
  return td;
}

function sizeCell(log) {
  const td = el('td', log.size.toLocaleString('en'), { class: 'num' });
  if (log.catchingUp) {
    const p = el('progress', null, { max: String(log.target), value: String(log.size) });
    td.append(
      el('div', `following: ${log.size.toLocaleString('en')} / ${log.target.toLocaleString('en')}`, {
        class: 'check',
      }),
      p,
    );
  }
  return td;
}

async function loadOverview() {
  const o = await api('/api/overview');
  const body = $('logs').tBodies[0];
  const rows = o.logs.map((log) => {
    const tr = el('tr');
    const name = el('td');
    name.append(nameEl('strong', log.name), el('div', log.origin, { class: 'origin' }));
    tr.append(name, stateCell(log), sizeCell(log), el('td', age(log.age)));
    const chart = el('td');
    chart.append(growthChart(log.history, log.name));
    tr.append(chart);
    return tr;
  });
  body.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------
// Agreement.

const agreementView = { page: 0, per: 25, sort: 'key' };

function shareBar(a) {
  const w = 600;
  const s = svg('svg', { viewBox: `0 0 ${w} 24`, class: 'share', role: 'img', preserveAspectRatio: 'none' });
  const title = svg('title');
  title.textContent = `all agree ${pct(a.shares.agree)}, decided ${pct(a.shares.decided)}, undecided ${pct(a.shares.undecided)}`;
  s.append(title);
  let x = 0;
  for (const [cls, share] of [
    ['decided', a.shares.decided],
    ['undecided', a.shares.undecided],
  ]) {
    s.append(svg('rect', { x, y: 0, width: share * w, height: 24, class: cls }));
    x += share * w;
  }
  if (a.keys > 0)
    s.append(
      svg('line', { x1: a.shares.agree * w, x2: a.shares.agree * w, y1: 0, y2: 24, class: 'agree-mark' }),
    );
  return s;
}

function matrixTable(a) {
  const head = el('tr');
  head.append(el('th'));
  for (const n of a.logs) head.append(nameEl('th', n, { scope: 'col' }));
  const rows = a.logs.map((n, i) => {
    const tr = el('tr');
    tr.append(nameEl('th', n, { scope: 'row' }));
    a.matrix[i].forEach((c, j) => {
      if (i === j) {
        tr.append(el('td', '—', { class: 'num' }));
        return;
      }
      const share = c.both === 0 ? undefined : c.same / c.both;
      const td = el('td', share === undefined ? 'no shared keys' : pct(share), {
        class: `num ${share === undefined ? '' : share === 1 ? 'good' : share >= 0.9 ? 'fair' : 'bad'}`,
        title: `${c.same} of ${c.both} shared keys agree`,
      });
      tr.append(td);
    });
    return tr;
  });
  $('matrix').replaceChildren(el('thead'), el('tbody'));
  $('matrix').tHead.append(head);
  $('matrix').tBodies[0].append(...rows);
}

function sortHeader(label, key) {
  const th = el('th', null, { scope: 'col' });
  const b = el('button', label, { type: 'button', class: 'sort' });
  const cur = agreementView.sort;
  if (cur === key || cur === `-${key}`) b.textContent += cur.startsWith('-') ? ' ▼' : ' ▲';
  b.addEventListener('click', () => {
    agreementView.sort = cur === key && key !== 'decided' ? `-${key}` : key;
    agreementView.page = 0;
    loadAgreement().catch(showError);
  });
  th.append(b);
  return th;
}

/** The rows of disagreeing keys: each log's value, the decided one, a link to search the key. */
function disagreeRows(a, rowsIn) {
  const rows = rowsIn.map((r) => {
    const tr = el('tr');
    const key = el('td', null, { class: 'key' });
    const link = el('a', r.key, { href: '#search' });
    link.addEventListener('click', () => {
      $('q').value = r.key;
      search(r.key).catch(showError);
    });
    key.append(link);
    tr.append(
      key,
      el('td', r.logs, { class: 'num' }),
      el('td', r.decided ? short(r.decided) : 'undecided', { class: 'mono' }),
    );
    for (const n of a.logs) {
      const value = r.values[n];
      tr.append(
        el('td', value === null ? '—' : short(value), {
          class: `mono ${value === null ? '' : value === r.decided ? 'good' : 'bad'}`,
          title: value ?? 'does not hold the key',
        }),
      );
    }
    return tr;
  });
  if (rows.length === 0) {
    const tr = el('tr');
    tr.append(el('td', 'No disagreement.', { colspan: String(3 + a.logs.length) }));
    rows.push(tr);
  }
  return rows;
}

async function loadAgreement() {
  const v = agreementView;
  const a = await api(`/api/agreement?page=${v.page}&per=${v.per}&sort=${encodeURIComponent(v.sort)}`);
  $('agree-summary').replaceChildren(
    el('span', `${a.keys.toLocaleString('en')} keys are held by two logs or more. `),
    el('strong', `${pct(a.shares.agree)} all agree`, { class: 'good-text' }),
    el('span', ', '),
    el('strong', `${pct(a.shares.decided)} decided`),
    el('span', ' by the configured procedure, '),
    el('strong', `${pct(a.shares.undecided)} undecided`, { class: 'bad-text' }),
    el('span', '.'),
    el('span', ` As of ${new Date(a.computedAt).toLocaleTimeString('en-GB')}.`, { class: 'check' }),
  );
  if (a.pending > 0) {
    const p = el('div', null, { class: 'check', id: 'pending' });
    p.append(
      el('span', `Script procedure: ${a.pending.toLocaleString('en')} keys wait for a decision `),
      el('progress', null, { max: String(a.keys + a.pending), value: String(a.keys) }),
    );
    $('agree-summary').append(p);
  }
  $('agree-bar').replaceChildren(shareBar(a));
  matrixTable(a);
  const d = a.disagreeing;
  $('dis-total').textContent = `(${d.total.toLocaleString('en')})`;
  const head = el('tr');
  head.append(sortHeader('Key', 'key'), sortHeader('Logs', 'logs'), sortHeader('Decided', 'decided'));
  for (const n of a.logs) head.append(nameEl('th', n, { scope: 'col' }));
  $('disagreeing').tHead.replaceChildren(head);
  $('disagreeing').tBodies[0].replaceChildren(...disagreeRows(a, d.rows));
  const pages = Math.max(1, Math.ceil(d.total / d.per));
  $('page').textContent = `page ${d.page + 1} of ${pages}`;
  $('prev').disabled = d.page === 0;
  $('next').disabled = d.page + 1 >= pages;
}

// ---------------------------------------------------------------------------------------------
// Package sets.

const setView = { name: undefined, page: 0 };

/** A chart of a set's history: the share of its paths that all agree and that are decided. */
function setChart(set, w = 160, h = 40) {
  const s = svg('svg', { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: 'chart', role: 'img' });
  const title = svg('title');
  title.textContent = `${set.name}: share of its paths that agree (green) and that are decided (line) over time`;
  s.append(title);
  const pts = set.history;
  if (pts.length === 0) return s;
  const t0 = pts[0][0];
  const t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
  const x = (t) => ((t - t0) / (t1 - t0)) * (w - 4) + 2;
  const y = (share) => h - 2 - share * (h - 4);
  for (const [cls, at] of [
    ['line agree-line', 2],
    ['line', 3],
  ]) {
    const line = pts.map((p) => `${x(p[0])},${y(set.size === 0 ? 0 : p[at] / set.size)}`);
    if (pts.length === 1) line.push(`${w - 2},${line[0].split(',')[1]}`);
    s.append(svg('polyline', { points: line.join(' '), fill: 'none', class: cls }));
  }
  return s;
}

function setShare(n, set) {
  return `${n.toLocaleString('en')} (${pct(set.size === 0 ? 0 : n / set.size)})`;
}

async function loadSets() {
  const { sets } = await api('/api/sets');
  const rows = sets.map((set) => {
    const tr = el('tr');
    const name = el('td');
    const open = el('button', set.name, { type: 'button', class: 'link name', title: set.name });
    open.addEventListener('click', () => {
      setView.name = set.name;
      setView.page = 0;
      loadSetDetail().catch(showError);
    });
    name.append(open, el('div', set.source === 'config' ? 'configured' : 'uploaded', { class: 'origin' }));
    const chart = el('td');
    chart.append(setChart(set));
    const del = el('td');
    if (set.source === 'upload') {
      const b = el('button', 'Delete', { type: 'button', title: `delete the set ${set.name}` });
      b.addEventListener('click', async () => {
        const r = await fetch(`/api/sets/${encodeURIComponent(set.name)}`, { method: 'DELETE' });
        if (setView.name === set.name) {
          setView.name = undefined;
          $('set-detail').replaceChildren();
        }
        $('set-message').textContent = r.ok ? `Deleted ${set.name}.` : `Cannot delete: HTTP ${r.status}`;
        loadSets().catch(showError);
      });
      del.append(b);
    }
    tr.append(
      name,
      el('td', set.size.toLocaleString('en'), { class: 'num' }),
      el('td', setShare(set.keys, set), { class: 'num' }),
      el('td', setShare(set.agree, set), { class: 'num good-text' }),
      el('td', setShare(set.decided, set), { class: 'num' }),
      el('td', setShare(set.undecided, set), { class: 'num bad-text' }),
      chart,
      del,
    );
    return tr;
  });
  if (rows.length === 0) {
    const tr = el('tr');
    tr.append(el('td', 'No package set yet: upload one above.', { colspan: '8' }));
    rows.push(tr);
  }
  $('set-list').tBodies[0].replaceChildren(...rows);
  if (setView.name !== undefined) await loadSetDetail();
}

async function loadSetDetail() {
  const name = setView.name;
  const a = await api(`/api/sets/${encodeURIComponent(name)}?page=${setView.page}&per=25`);
  const out = $('set-detail');
  const head = el('h3', `Set ${a.name}`, { title: a.name });
  const summary = el('p', null, { id: 'set-summary' });
  summary.append(
    el(
      'span',
      `${a.agree.toLocaleString('en')} of ${a.size.toLocaleString('en')} paths all agree; ${a.keys.toLocaleString('en')} are held by two logs or more, ${a.unseen.toLocaleString('en')} are not (yet). `,
    ),
    el('strong', `${pct(a.shares.decided)} decided`),
    el('span', ', '),
    el('strong', `${pct(a.shares.undecided)} undecided`, { class: 'bad-text' }),
    el('span', ' of those held by two logs.'),
  );
  const chart = el('div', null, { class: 'set-chart' });
  chart.append(
    setChart(a, 600, 120),
    el('div', 'Over time, as shares of the set: all agree (green), decided (blue).', { class: 'check' }),
  );
  const table = el('table', null, { id: 'set-disagreeing' });
  const th = el('tr');
  th.append(el('th', 'Key'), el('th', 'Logs'), el('th', 'Decided'));
  for (const n of a.logs) th.append(nameEl('th', n, { scope: 'col' }));
  table.append(el('thead'), el('tbody'));
  table.tHead.append(th);
  table.tBodies[0].append(...disagreeRows(a, a.disagreeing.rows));
  const wrap = el('div', null, { class: 'scroll' });
  wrap.append(table);
  const pages = Math.max(1, Math.ceil(a.disagreeing.total / a.disagreeing.per));
  const pager = el('div', null, { class: 'pager' });
  const prev = el('button', 'Previous', { type: 'button' });
  const next = el('button', 'Next', { type: 'button' });
  prev.disabled = setView.page === 0;
  next.disabled = setView.page + 1 >= pages;
  prev.addEventListener('click', () => {
    setView.page--;
    loadSetDetail().catch(showError);
  });
  next.addEventListener('click', () => {
    setView.page++;
    loadSetDetail().catch(showError);
  });
  pager.append(prev, el('span', ` page ${setView.page + 1} of ${pages} `), next);
  out.replaceChildren(
    head,
    summary,
    chart,
    el('h4', `Disagreeing paths (${a.disagreeing.total.toLocaleString('en')})`),
    wrap,
    pager,
  );
}

$('set-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = $('set-name').value.trim();
  const file = $('set-file').files[0];
  if (!name || !file) return;
  const msg = $('set-message');
  msg.textContent = 'Uploading…';
  try {
    const r = await fetch(`/api/sets/${encodeURIComponent(name)}`, {
      method: 'PUT',
      headers: { 'content-type': 'text/plain; charset=utf-8' },
      body: await file.text(),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    msg.textContent = `Set ${body.name}: ${body.size.toLocaleString('en')} paths.`;
    setView.name = body.name;
    setView.page = 0;
    await loadSets();
  } catch (err) {
    msg.textContent = `Upload failed: ${err.message}`;
  }
});

// ---------------------------------------------------------------------------------------------
// Search.

async function search(q) {
  const out = $('result');
  out.replaceChildren(el('p', 'Asking every log…'));
  const r = await api(`/api/search?q=${encodeURIComponent(q)}`);
  const d = r.decision;
  const verdict = el('p', null, { class: `verdict ${d.decided ? 'decided' : 'undecided'}` });
  verdict.append(
    el('strong', d.decided ? 'Decided' : 'Undecided'),
    el('span', d.decided ? `: ${d.value}` : `: ${d.protocol} ${d.key}`, { class: 'mono' }),
  );
  if (d.confidence !== undefined) verdict.append(el('span', ` (confidence ${pct(d.confidence)})`));
  const why = el('p', `${d.procedure}: ${d.reason}`, { class: 'reason' });
  const table = el('table');
  const head = el('tr');
  for (const h of ['Log', 'Answer', 'Value', 'Entry', 'Checkpoint size', 'Check'])
    head.append(el('th', h, { scope: 'col' }));
  table.append(el('thead'), el('tbody'));
  table.tHead.append(head);
  for (const l of d.logs) {
    const tr = el('tr');
    tr.append(
      nameEl('td', l.name),
      el('td', l.status, { class: `state ${l.status}` }),
      el('td', l.value ?? '', { class: 'mono' }),
      el('td', l.index ?? '', { class: 'num' }),
      el('td', l.size ?? '', { class: 'num' }),
      el('td', l.check ? `${l.check}: ${l.reason}` : '', { class: 'check' }),
    );
    table.tBodies[0].append(tr);
  }
  const evidence = el('a', 'Download the evidence bundle', { href: r.evidence, download: 'evidence.json' });
  const raw = el('details');
  raw.append(el('summary', 'As trustix decide --json gives it'), el('pre', JSON.stringify(d, null, 2)));
  const wrap = el('div', null, { class: 'scroll' });
  wrap.append(table);
  const link = el('p');
  link.append(evidence);
  out.replaceChildren(verdict, why, wrap, link, raw);
}

function showError(err) {
  setStatus(`Cannot reach the dashboard: ${err.message}`);
}

// ---------------------------------------------------------------------------------------------

async function refresh() {
  try {
    await Promise.all([loadOverview(), loadAgreement(), loadSets()]);
    setStatus(`Updated ${new Date().toLocaleTimeString('en-GB')}`);
  } catch (err) {
    showError(err);
  }
}

$('search-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = $('q').value.trim();
  if (q)
    search(q).catch((err) =>
      $('result').replaceChildren(el('p', `Search failed: ${err.message}`, { class: 'bad-text' })),
    );
});
$('prev').addEventListener('click', () => {
  agreementView.page = Math.max(0, agreementView.page - 1);
  loadAgreement().catch(showError);
});
$('next').addEventListener('click', () => {
  agreementView.page++;
  loadAgreement().catch(showError);
});

refresh();
setInterval(refresh, 3000);
