// The report page: renders the inline JSON (see cli/src/report/data.rs for its fields).
// Sections render when first opened; lists are paginated; every number links to the
// node whose record produced it (the node's panel shows its key and the run).

const R = JSON.parse(document.getElementById('report-data').textContent);
const N = R.nodes;
const STATES = ['executed', 'cached', 'failed', 'skipped'];
const byName = new Map(N.map((n, i) => [n.name, i]));
const app = document.getElementById('app');

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) {
    if (attrs[k] != null) e.setAttribute(k, attrs[k]);
  }
  for (const k of kids) {
    if (k == null) continue;
    e.appendChild(typeof k === 'string' || typeof k === 'number' ? document.createTextNode(String(k)) : k);
  }
  return e;
}

function clip(s, n) { return s.length > n ? s.slice(0, n - 1) + '…' : s; }

function fmtNum(x) {
  if (x == null || Number.isNaN(x)) return '-';
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return String(x);
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 1e6) return x.toFixed(Math.max(0, 3 - Math.floor(Math.log10(a))));
  return x.toExponential(3);
}

function signed(x) { return x == null ? '-' : (x >= 0 ? '+' : '') + fmtNum(x); }

function fmtMs(ms) {
  if (ms == null) return '-';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
  return Math.floor(ms / 60000) + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
}

function fmtTime(ms) { return ms ? new Date(ms).toISOString().replace('.000Z', 'Z') : '-'; }

function shown(v) { return typeof v === 'string' ? v : JSON.stringify(v); }

function nodeHash(i) { return '#node=' + encodeURIComponent(N[i].name); }

function recordTitle(i, base) {
  const n = N[i];
  if (base) return n.base ? `baseline record of ${n.name}: key ${n.base[0]}, run ${n.base[1]}` : '';
  return `${n.name}: key ${n.key || '-'}, run ${n.rec_run || R.run.id}`;
}

// A link to the node (and so to its record), titled with the record's key and run.
function nodeLink(i, text, base) {
  if (i == null) return el('span', {}, text);
  return el('a', { href: nodeHash(i), class: 'rec', title: recordTitle(i, base) }, text);
}

function table(headers, rows, numeric) {
  const t = el('table', {});
  t.appendChild(el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', {}, h)))));
  const body = el('tbody', {});
  for (const r of rows) {
    body.appendChild(el('tr', {}, ...r.map((c, k) => el('td', { class: numeric && numeric[k] ? 'num' : 'wrap' }, c))));
  }
  t.appendChild(body);
  return t;
}

// A filterable table shown `per` rows at a time. `rowOf(item)` gives the cells,
// `text(item)` what the filter matches.
function pagedTable(items, headers, rowOf, text, numeric, per, extra) {
  const box = el('div', {});
  const filter = el('input', { type: 'search', placeholder: 'filter' });
  const info = el('span', { class: 'meta' });
  const prev = el('button', {}, '‹ previous'), next = el('button', {}, 'next ›');
  const bar = el('div', { class: 'toolbar' }, filter, extra ? extra.control : null, el('span', { class: 'pager' }, prev, next), info);
  const holder = el('div', {});
  box.append(bar, holder);
  let page = 0, shownItems = items;
  function apply() {
    const q = filter.value.toLowerCase();
    shownItems = items.filter((it) => (!q || text(it).toLowerCase().includes(q)) && (!extra || extra.keep(it)));
    page = 0;
    draw();
  }
  function draw() {
    const pages = Math.max(1, Math.ceil(shownItems.length / per));
    page = Math.min(page, pages - 1);
    const slice = shownItems.slice(page * per, page * per + per);
    holder.replaceChildren(table(headers, slice.map(rowOf), numeric));
    info.textContent = `${shownItems.length} of ${items.length}; page ${page + 1} of ${pages}`;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  filter.addEventListener('input', apply);
  if (extra) extra.control.addEventListener('change', apply);
  prev.addEventListener('click', () => { page--; draw(); });
  next.addEventListener('click', () => { page++; draw(); });
  draw();
  return box;
}

// A section rendered the first time it is opened.
function lazy(id, title, open, build) {
  const d = el('details', { id: id });
  d.appendChild(el('summary', {}, title));
  let done = false;
  function fill() {
    if (done || !d.open) return;
    done = true;
    d.appendChild(build());
  }
  d.addEventListener('toggle', fill);
  if (open) { d.open = true; fill(); }
  return d;
}

// One chart: `cols` is column → values; x is its `step` column when it has one, else the
// row number. `base` (the baseline's table) adds a dashed series.
function chart(title, link, cols, col, base) {
  const box = el('div', { class: 'chart' }, el('div', { class: 'title' }, link));
  const xs = (c) => (c.step ? c.step : c[col].map((_, k) => k + 1));
  const clean = (v) => v.map((y) => (y == null ? null : y));
  const mine = [xs(cols), clean(cols[col])];
  let data = mine;
  const series = [{ label: cols.step ? 'step' : 'row' }, { label: base ? 'this run' : col, stroke: '#0969da', width: 2 }];
  if (base && base[col]) {
    data = uPlot.join([mine, [xs(base), clean(base[col])]]);
    series.push({ label: 'baseline', stroke: '#cf222e', width: 2, dash: [6, 4] });
  }
  const opts = { title: title, width: 520, height: 240, series: series, scales: { x: { time: false } } };
  requestAnimationFrame(() => {
    // eslint-disable-next-line no-new
    new uPlot(opts, data, box);
  });
  return box;
}

// The charts of some metrics tables: one per column other than `step`.
function chartsOf(list, withBase) {
  const box = el('div', { class: 'charts' });
  let count = 0;
  for (const s of list) {
    for (const col of Object.keys(s.cols)) {
      if (col === 'step' || s.cols[col].every((v) => v == null)) continue;
      const name = `${N[s.node].name}.${s.port}.${col}`;
      box.appendChild(chart(name, nodeLink(s.node, name), s.cols, col, withBase ? s.base : null));
      count++;
    }
  }
  if (!count) box.appendChild(el('p', { class: 'empty' }, 'no training curves'));
  return box;
}

function header() {
  const r = R.run;
  const counts = {};
  for (const n of N) counts[n.state] = (counts[n.state] || 0) + 1;
  const h = el('header', {});
  h.appendChild(el('h1', {}, `${r.pipeline}: run ${r.id} `, el('span', { class: 'chip status' }, r.status)));
  h.appendChild(el('p', { class: 'meta' }, `pipeline file ${r.path}; started ${fmtTime(r.started_ms)}, ` +
    `took ${fmtMs(r.finished_ms - r.started_ms)}; report by expflow ${R.expflow} at ${fmtTime(R.generated_ms)}`));
  h.appendChild(el('p', { class: 'legend' }, `${N.length} nodes: `,
    ...STATES.map((s) => el('span', {}, el('span', { class: 'chip ' + s }, s), String(counts[s] || 0)))));
  const params = Object.entries(r.params);
  if (params.length) h.appendChild(el('p', { class: 'meta' }, 'parameters: ' + params.map(([k, v]) => `${k}=${shown(v)}`).join(', ')));
  if (R.baseline) h.appendChild(el('p', {}, 'compared with the baseline run ', el('a', { href: '#diff' }, R.baseline.id),
    ` (started ${fmtTime(R.baseline.started_ms)}, ${R.baseline.status})`));
  return h;
}

function nodeDetail(i) {
  const n = N[i];
  const box = el('div', {});
  box.appendChild(el('h2', {}, `node ${n.name} `, el('span', { class: 'chip ' + n.state }, n.state)));
  const facts = [
    ['key', el('code', {}, n.key || '-')],
    ['operator', n.op || '-'],
    ['record from run', n.rec_run ? n.rec_run + (n.rec_run === R.run.id ? ' (this run)' : ' (found in the cache)') : 'none (no record)'],
    ['time in this run', n.t0 != null && n.t1 != null ? `${fmtTime(n.t0)} to ${fmtTime(n.t1)} (${fmtMs(n.t1 - n.t0)})` : '-'],
    ['execution took', fmtMs(n.dur)],
  ];
  if (n.attempts > 1) facts.push(['attempts', String(n.attempts)]);
  if (n.error) facts.push(['error', el('pre', {}, n.error)]);
  if (n.reason) facts.push(['skipped because', n.reason]);
  if (n.base) facts.push(['baseline record', el('span', {}, el('code', {}, n.base[0]), ` from run ${n.base[1]}` + (n.base[0] === n.key ? ' (same key)' : ' (key differs)'))]);
  box.appendChild(table(['', ''], facts));
  box.appendChild(el('h3', {}, 'outputs'));
  box.appendChild(n.outs.length ? table(['port', 'type', 'bytes', 'digest (BLAKE3)'],
    n.outs.map(([p, d, k, s]) => [p, k, fmtNum(s), el('code', {}, d)]), [0, 0, 1, 0]) : el('p', { class: 'empty' }, 'none recorded'));
  if (n.ins.length) {
    box.appendChild(el('h3', {}, 'inputs'));
    box.appendChild(table(['port', 'from', 'digest'], n.ins.map(([p, src, d]) => {
      const up = byName.get(src.replace(/\.[^.]*$/, ''));
      return [p, up != null ? el('a', { href: nodeHash(up) }, src) : src, el('code', {}, d)];
    })));
  }
  const params = Object.entries(n.params);
  box.appendChild(el('h3', {}, 'parameters'));
  box.appendChild(params.length ? table(['name', 'value'], params.map(([k, v]) => [k, el('code', {}, shown(v))])) : el('p', { class: 'empty' }, 'none'));
  const mine = R.metrics.filter((m) => m[0] === i);
  if (mine.length) {
    box.appendChild(el('h3', {}, 'metrics'));
    box.appendChild(table(['metric', 'value'], mine.map((m) => [m[1], fmtNum(m[2])]), [0, 1]));
  }
  const curves = R.series.filter((s) => s.node === i);
  if (curves.length) {
    box.appendChild(el('h3', {}, 'training curves'));
    box.appendChild(chartsOf(curves, !!R.baseline));
  }
  box.appendChild(el('h3', {}, 'log (last lines)'));
  box.appendChild(n.log ? el('pre', {}, n.log) : el('p', { class: 'empty' }, 'no log lines'));
  return box;
}

function diffSection() {
  const d = R.diff;
  const box = el('div', {});
  box.appendChild(el('p', { class: 'meta' }, `baseline ${d.a} → this run ${d.b}, as \`expflow diff ${d.a} ${d.b}\` reports it`));
  box.appendChild(el('h3', {}, `parameters that changed (${d.params.length})`));
  box.appendChild(d.params.length ? table(['parameter', 'baseline', 'this run'],
    d.params.map((p) => [p.name, el('code', {}, shown(p.old)), el('code', {}, shown(p.new))])) : el('p', { class: 'empty' }, 'none'));
  box.appendChild(el('h3', {}, `metrics that changed (${d.metrics.length})`));
  box.appendChild(d.metrics.length ? table(['metric', 'baseline', 'this run', 'difference', 'because'],
    d.metrics.map((m, k) => {
      const i = d.metric_nodes[k];
      return [nodeLink(i, m.name), nodeLink(i, fmtNum(m.old), true), nodeLink(i, fmtNum(m.new)), signed(m.delta),
        m.causes.length ? el('ul', {}, ...m.causes.map((c) => el('li', {}, c))) : '-'];
    }), [0, 1, 1, 1, 0]) : el('p', { class: 'empty' }, 'none'));
  box.appendChild(el('h3', {}, `nodes that re-ran (${d.reran.length})`));
  box.appendChild(d.reran.length ? pagedTable(d.reran, ['node', 'why'], (c) => [nodeLink(byName.get(c.node), c.node),
    el('ul', {}, ...c.causes.map((x) => el('li', {}, describe(x))))], (c) => c.node, null, 100) : el('p', { class: 'empty' }, 'none: same keys'));
  if (d.removed.length) box.appendChild(el('p', {}, `nodes only in the baseline: ${d.removed.join(', ')}`));
  const changed = R.series.filter((s) => s.base);
  box.appendChild(el('h3', {}, `training curves, baseline and this run (${changed.length} tables differ)`));
  box.appendChild(changed.length ? chartsOf(changed, true) : el('p', { class: 'empty' }, 'no training curve differs between the runs'));
  return box;
}

// A re-run cause in words, as `expflow diff` prints it.
function describe(c) {
  switch (c.kind) {
    case 'new': return 'new node';
    case 'param': return `param ${c.name}: ${shown(c.old)} → ${shown(c.new)}`;
    case 'code': return `\`${c.op}\` version ${c.old} → ${c.new}`;
    case 'environment': return `environment \`${c.name}\` changed`;
    case 'input_file': return `input file \`${c.input}\` changed (port ${c.port})`;
    case 'upstream': return `upstream \`${c.node}\` changed (port ${c.port})`;
    default: return c.what || c.kind;
  }
}

function main() {
  const selected = { i: null };
  app.appendChild(header());
  const nav = el('nav', {}, ...[['dag', 'DAG'], ['nodes', 'nodes'], ['timeline', 'timeline'], ['metrics', 'metrics'],
    ['curves', 'training curves']].concat(R.diff ? [['diff', 'baseline diff']] : []).map(([id, t]) => el('a', { href: '#' + id }, t)));
  app.appendChild(nav);

  app.appendChild(el('h2', { id: 'dag' }, 'DAG'));
  app.appendChild(el('p', { class: 'meta' }, `${R.layers} layers by topological depth, at most ${R.width} nodes in one; ` +
    'scroll to move, click a node for its record; only the part in view is drawn.'));
  const dag = dagSection(selected);
  app.appendChild(dag);
  const detail = el('section', { id: 'detail', hidden: '' });
  app.appendChild(detail);

  app.appendChild(el('h2', { id: 'nodes' }, 'nodes'));
  const stateSel = el('select', {}, el('option', { value: '' }, 'every state'), ...STATES.map((s) => el('option', { value: s }, s)));
  const idx = N.map((_, i) => i).sort((a, b) => N[a].layer - N[b].layer || N[a].pos - N[b].pos);
  app.appendChild(pagedTable(idx, ['node', 'state', 'operator', 'took', 'key', 'outputs'],
    (i) => [nodeLink(i, N[i].name), N[i].state, N[i].op, nodeLink(i, fmtMs(N[i].dur)), el('code', {}, (N[i].key || '-').slice(0, 16)),
      String(N[i].outs.length)], (i) => N[i].name + ' ' + N[i].op, [0, 0, 0, 1, 0, 1], 50,
    { control: stateSel, keep: (i) => !stateSel.value || N[i].state === stateSel.value }));

  app.appendChild(lazy('timeline', 'timeline', N.length <= 2000, ganttSection));
  app.appendChild(lazy('metrics', `metrics (${R.metrics.length})`, R.metrics.length <= 500, () =>
    R.metrics.length ? pagedTable(R.metrics, ['node', 'metric', 'value'], (m) => [nodeLink(m[0], N[m[0]].name), m[1],
      nodeLink(m[0], fmtNum(m[2]))], (m) => N[m[0]].name + '.' + m[1], [0, 0, 1], 100) : el('p', { class: 'empty' }, 'no metrics recorded')));
  app.appendChild(lazy('curves', `training curves (${R.series.length} tables)`, R.series.length <= 24, () => chartsOf(R.series, false)));
  if (R.diff) app.appendChild(lazy('diff', 'baseline diff', true, diffSection));

  function route() {
    const h = decodeURIComponent(location.hash.slice(1));
    if (!h.startsWith('node=')) return;
    const i = byName.get(h.slice(5));
    if (i == null) return;
    selected.i = i;
    detail.hidden = false;
    detail.replaceChildren(nodeDetail(i));
    dagReveal(dag, i);
    detail.scrollIntoView();
  }
  window.addEventListener('hashchange', route);
  requestAnimationFrame(() => {
    dag.redraw();
    route();
    document.documentElement.dataset.renderMs = performance.now().toFixed(0);
    document.documentElement.dataset.ready = '1';
  });
}

main();
