// The two large views: the DAG and the timeline. Both draw into an SVG the size of the
// visible area and redraw on scroll, so a 10,000-node run costs only what is in view. The
// DAG's layout (layer, position) comes from the report's data, computed in Rust.

const SVG = 'http://www.w3.org/2000/svg';

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

// A scrollable area of `width` × `height` pixels whose visible part `draw(svg, box)` fills.
function virtualView(id, width, height, viewHeight, draw) {
  const view = el('div', { class: 'view', id: id });
  view.style.height = Math.min(height + 2, viewHeight) + 'px';
  const inner = el('div', { class: 'inner' });
  inner.style.width = width + 'px';
  inner.style.height = height + 'px';
  const svg = svgEl('svg', {});
  inner.appendChild(svg);
  view.appendChild(inner);
  let queued = false;
  function redraw() {
    queued = false;
    const w = view.clientWidth, h = view.clientHeight;
    const box = { x0: view.scrollLeft, y0: view.scrollTop, x1: view.scrollLeft + w, y1: view.scrollTop + h };
    svg.style.left = box.x0 + 'px';
    svg.style.top = box.y0 + 'px';
    svg.setAttribute('width', w);
    svg.setAttribute('height', h);
    svg.setAttribute('viewBox', box.x0 + ' ' + box.y0 + ' ' + w + ' ' + h);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    draw(svg, box);
  }
  view.addEventListener('scroll', () => {
    if (!queued) { queued = true; requestAnimationFrame(redraw); }
  });
  window.addEventListener('resize', () => redraw());
  view.redraw = redraw;
  return view;
}

const DAG = { colW: 230, rowH: 34, nodeW: 190, nodeH: 24, pad: 16 };

function dagPos(i) {
  return { x: DAG.pad + N[i].layer * DAG.colW, y: DAG.pad + N[i].pos * DAG.rowH };
}

function dagSection(selected) {
  const members = [];
  N.forEach((n, i) => {
    (members[n.layer] = members[n.layer] || [])[n.pos] = i;
  });
  const width = DAG.pad * 2 + R.layers * DAG.colW;
  const height = DAG.pad * 2 + R.width * DAG.rowH;
  const view = virtualView('dag-view', width, height, 560, (svg, b) => {
    const m = 40;
    let edges = 0;
    for (const [f, t] of R.edges) {
      const a = dagPos(f), c = dagPos(t);
      const x0 = a.x + DAG.nodeW, y0 = a.y + DAG.nodeH / 2, x1 = c.x, y1 = c.y + DAG.nodeH / 2;
      if (Math.max(x0, x1) < b.x0 - m || Math.min(x0, x1) > b.x1 + m) continue;
      if (Math.max(y0, y1) < b.y0 - m || Math.min(y0, y1) > b.y1 + m) continue;
      const mx = (x0 + x1) / 2;
      svg.appendChild(svgEl('path', {
        class: 'dag-edge', d: `M${x0},${y0} C${mx},${y0} ${mx},${y1} ${x1},${y1}`, 'data-edge': N[f].name + ' > ' + N[t].name,
      }));
      edges++;
    }
    const l0 = Math.max(0, Math.floor((b.x0 - DAG.pad) / DAG.colW) - 1);
    const l1 = Math.min(R.layers - 1, Math.ceil((b.x1 - DAG.pad) / DAG.colW));
    const p0 = Math.max(0, Math.floor((b.y0 - DAG.pad) / DAG.rowH) - 1);
    const p1 = Math.ceil((b.y1 - DAG.pad) / DAG.rowH);
    let drawn = 0;
    for (let l = l0; l <= l1; l++) {
      const col = members[l] || [];
      for (let p = p0; p <= Math.min(p1, col.length - 1); p++) {
        const i = col[p];
        if (i === undefined) continue;
        const n = N[i], at = dagPos(i);
        const g = svgEl('g', { class: 'dag-node st-' + n.state + (i === selected.i ? ' sel' : ''), 'data-node': n.name });
        const title = svgEl('title', {});
        title.textContent = `${n.name} · ${n.state}${n.key ? ' · key ' + n.key : ''}`;
        g.appendChild(title);
        g.appendChild(svgEl('rect', { x: at.x, y: at.y, width: DAG.nodeW, height: DAG.nodeH, rx: 4 }));
        const t = svgEl('text', { x: at.x + 6, y: at.y + 16 });
        t.textContent = clip(n.name, 26);
        g.appendChild(t);
        g.addEventListener('click', () => { location.hash = nodeHash(i); });
        svg.appendChild(g);
        drawn++;
      }
    }
    view.dataset.drawnNodes = drawn;
    view.dataset.drawnEdges = edges;
  });
  view.dataset.nodes = N.length;
  return view;
}

function dagReveal(view, i) {
  const at = dagPos(i);
  view.scrollLeft = Math.max(0, at.x - view.clientWidth / 3);
  view.scrollTop = Math.max(0, at.y - view.clientHeight / 2);
  view.redraw();
}

// The timeline: one row per node that ran in this run (executed or failed), by start time.
function ganttSection() {
  const rows = [];
  N.forEach((n, i) => {
    if ((n.state === 'executed' || n.state === 'failed') && n.t0 != null && n.t1 != null) rows.push(i);
  });
  rows.sort((a, b) => N[a].t0 - N[b].t0 || a - b);
  const box = el('div', {});
  const cached = N.filter((n) => n.state === 'cached').length;
  box.appendChild(el('p', { class: 'meta' }, `${rows.length} nodes ran in this run` +
    (cached ? `; ${cached} came from the cache and are not shown` : '') +
    '. Bars from each node\'s start to its end (events of the run); hover for times, click for the node.'));
  if (!rows.length) return box;
  const t0 = Math.min(...rows.map((i) => N[i].t0));
  const t1 = Math.max(...rows.map((i) => N[i].t1), t0 + 1);
  const rowH = 18, label = 260, head = 22, plotW = 900;
  const width = label + plotW + 20, height = head + rows.length * rowH + 4;
  const x = (t) => label + ((t - t0) / (t1 - t0)) * plotW;
  const ticks = niceTicks(0, (t1 - t0) / 1000, 8);
  const view = virtualView('gantt-view', width, height, 520, (svg, b) => {
    for (const s of ticks) {
      const gx = x(t0 + s * 1000);
      svg.appendChild(svgEl('line', { class: 'gantt-grid', x1: gx, x2: gx, y1: b.y0, y2: b.y1 }));
      const tx = svgEl('text', { class: 'gantt-axis', x: gx + 2, y: b.y0 + 12 });
      tx.textContent = String(+s.toPrecision(6)) + ' s';
      svg.appendChild(tx);
    }
    const r0 = Math.max(0, Math.floor((b.y0 - head) / rowH) - 1);
    const r1 = Math.min(rows.length - 1, Math.ceil((b.y1 - head) / rowH));
    let drawn = 0;
    for (let r = r0; r <= r1; r++) {
      const i = rows[r], n = N[i], y = head + r * rowH;
      const name = svgEl('text', { class: 'gantt-label', x: 4, y: y + 12 });
      name.textContent = clip(n.name, 36);
      svg.appendChild(name);
      const g = svgEl('g', { class: 'gantt-bar st-' + n.state, 'data-node': n.name });
      const title = svgEl('title', {});
      title.textContent = `${n.name}: ${fmtMs(n.t1 - n.t0)}, from +${fmtMs(n.t0 - t0)} (run ${R.run.id})`;
      g.appendChild(title);
      g.appendChild(svgEl('rect', { x: x(n.t0), y: y + 2, width: Math.max(2, x(n.t1) - x(n.t0)), height: rowH - 5 }));
      g.addEventListener('click', () => { location.hash = nodeHash(i); });
      svg.appendChild(g);
      drawn++;
    }
    view.dataset.drawnBars = drawn;
  });
  box.appendChild(view);
  requestAnimationFrame(() => view.redraw());
  return box;
}

function niceTicks(lo, hi, count) {
  const span = Math.max(hi - lo, 1e-9);
  const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}
