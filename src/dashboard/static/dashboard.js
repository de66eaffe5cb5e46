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
  const rows = d.rows.map((r) => {
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
  $('disagreeing').tBodies[0].replaceChildren(...rows);
  const pages = Math.max(1, Math.ceil(d.total / d.per));
  $('page').textContent = `page ${d.page + 1} of ${pages}`;
  $('prev').disabled = d.page === 0;
  $('next').disabled = d.page + 1 >= pages;
}

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
    await Promise.all([loadOverview(), loadAgreement()]);
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
