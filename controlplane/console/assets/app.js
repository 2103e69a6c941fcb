// meshguard console. Every identity, route, reason and path that came from
// the mesh is put on the page as text (textContent, cytoscape's canvas
// labels), never as markup.
(function () {
  'use strict';

  const CLASSES = ['allow', 'deny', 'dry', 'anom'];
  const ACTIVE = 0.002; // req/s below which a class is idle (a single request decays below it in ~2 min)
  const FEED_MAX = 300;
  const BIG = 1500; // edges above which no arrow heads are drawn

  const mg = {
    firstPaintMs: null, snapshotMs: null, buildMs: null,
    nodes: 0, edges: 0, deltas: 0, lastDeltaAppliedMs: null,
    cy: null,
  };
  window.__mg = mg;

  const st = {
    session: null,
    nodes: new Map(), // id → NodeView
    edges: new Map(), // edge id → EdgeView
    byPair: new Map(), // src + '\n' + dst → edge id
    feed: [],
    tau: 60,
    seq: 0,
    offset: 0, // server clock − local clock, ms
    nsSet: new Set(),
    filterNs: '',
    filterId: '',
    view: 'graph',
    identity: null,
    waiters: [],
  };

  // ----- small DOM helpers (text only) -----
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function idLink(id, label) {
    const a = el('a', 'id-link', label === undefined ? shortName(id) : label);
    a.href = '#/identity/' + encodeURIComponent(id);
    a.title = id;
    return a;
  }
  function shortName(id) {
    const n = st.nodes.get(id);
    if (n) return n.name;
    return id;
  }
  function fmtTime(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function fmtRate(r) {
    if (r >= 100) return r.toFixed(0);
    if (r >= 1) return r.toFixed(1);
    if (r >= 0.01) return r.toFixed(2);
    return r > 0 ? '<0.01' : '0';
  }
  function serverNow() { return Date.now() + st.offset; }
  function wallNow() { return performance.timeOrigin + performance.now(); }

  async function api(path, opts) {
    opts = opts || {};
    const init = { credentials: 'same-origin', headers: {} };
    if (opts.body !== undefined) {
      init.method = 'POST';
      init.headers['Content-Type'] = 'application/json';
      if (st.session && st.session.csrf) init.headers['X-Meshguard-Csrf'] = st.session.csrf;
      init.body = JSON.stringify(opts.body);
    }
    const res = await fetch('api/' + path, init);
    if (res.status === 401) {
      location.replace('login');
      throw new Error('signed out');
    }
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    return { status: res.status, data: data };
  }

  // ----- rates and classes -----
  function rateNow(e, i, now) {
    const dt = Math.max(0, (now - e.at) / 1000);
    return e.r[i] * Math.exp(-dt / st.tau);
  }
  function edgeClass(e, now) {
    if (rateNow(e, 3, now) > ACTIVE) return 'anom';
    if (rateNow(e, 1, now) > ACTIVE) return 'deny';
    if (rateNow(e, 2, now) > ACTIVE) return 'dry';
    if (rateNow(e, 0, now) > ACTIVE) return 'allow';
    return 'idle';
  }
  function edgeWidth(e, now) {
    let total = 0;
    for (let i = 0; i < 4; i++) total += rateNow(e, i, now);
    return Math.min(8, 1 + Math.log2(1 + total * 4));
  }
  function nodeClasses(n) {
    const c = [];
    if (n.q) c.push('q');
    if (n.lastDet && serverNow() - n.lastDet < 120000) c.push('det');
    if (!n.known) c.push('unlisted');
    return c.join(' ');
  }

  // ----- layout: namespaces as groups, nodes in a sunflower within each -----
  function nsOf(n) { return n.ns || '(none)'; }
  function layout() {
    const groups = new Map();
    for (const n of st.nodes.values()) {
      const g = nsOf(n);
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(n);
    }
    const names = Array.from(groups.keys()).sort();
    const c = st.nodes.size > 300 ? 26 : 48; // room for labels in small meshes
    const placed = new Map(); // node id → position; 'ns:' + namespace → its label's
    let area = 0;
    const sizes = names.map(function (g) {
      const k = groups.get(g).length;
      const r = c * Math.sqrt(k) + 40;
      area += 4 * r * r;
      return r;
    });
    const rowWidth = Math.max(600, Math.sqrt(area) * 2.2);
    let x = 0, y = 0, rowH = 0;
    names.forEach(function (g, gi) {
      const r = sizes[gi];
      if (x > 0 && x + 2 * r > rowWidth) { x = 0; y += rowH + 60; rowH = 0; }
      const cx = x + r, cy = y + r;
      placed.set('ns:' + g, { x: cx, y: y + 6 });
      const members = groups.get(g).sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : (a.id < b.id ? -1 : 1); });
      members.forEach(function (n, i) {
        const rad = c * Math.sqrt(i + 0.5);
        const th = i * 2.399963229728653;
        placed.set(n.id, { x: cx + rad * Math.cos(th), y: cy + rad * Math.sin(th) });
      });
      x += 2 * r + 60;
      rowH = Math.max(rowH, 2 * r);
    });
    return placed;
  }

  // ----- the graph -----
  // cytoscape.js draws the workloads (shapes, labels, pan, zoom, taps);
  // the edges go on a canvas of their own under it, in one path per colour:
  // as cytoscape.js elements, 10,000 edges took seconds to build and to
  // redraw, and these take milliseconds.
  const COLORS = { allow: '#2e7d32', deny: '#c62828', dry: '#f9a825', anom: '#6a1b9a', idle: '#cfd8dc' };
  const ORDER = ['idle', 'allow', 'dry', 'deny', 'anom']; // later on top
  const edgeCls = new Map(); // edge id → class drawn ('allow' … 'idle')
  let edgeCanvas = null;
  let drawPending = false;

  function style() {
    return [
      { selector: 'node', style: {
        'background-color': '#455a64', 'label': 'data(label)', 'font-size': st.nodes.size > 300 ? 10 : 13, 'color': '#263238',
        'text-valign': 'bottom', 'text-margin-y': 3, 'width': 16, 'height': 16, 'min-zoomed-font-size': 7,
        'text-max-width': 160, 'text-wrap': 'ellipsis' } },
      // Namespace names are label-only nodes above their group (compound
      // parents cost seconds per redraw at 1,000 workloads).
      { selector: 'node.ns', style: {
        'background-opacity': 0, 'width': 1, 'height': 1, 'label': 'data(label)', 'text-valign': 'center',
        'font-size': 16, 'font-weight': 'bold', 'color': '#78909c', 'min-zoomed-font-size': 4, 'text-max-width': 400 } },
      { selector: 'node.unlisted', style: { 'background-color': '#90a4ae' } },
      { selector: 'node.det', style: { 'border-width': 3, 'border-color': '#ef6c00' } },
      { selector: 'node.q', style: {
        'background-color': '#b71c1c', 'shape': 'octagon', 'border-width': 4, 'border-color': '#000000',
        'width': 26, 'height': 26, 'color': '#b71c1c', 'font-weight': 'bold' } },
      { selector: 'node:selected', style: { 'overlay-color': '#1565c0', 'overlay-opacity': 0.2 } },
      { selector: '.hidden', style: { 'display': 'none' } },
    ];
  }

  function nodeElement(n, pos) {
    return { group: 'nodes', data: { id: n.id, label: n.name, ns: nsOf(n) }, classes: nodeClasses(n), position: pos };
  }
  function nsElement(ns, pos) {
    return { group: 'nodes', data: { id: 'ns:' + ns, label: ns }, classes: 'ns', selectable: false, grabbable: false, position: pos || { x: 0, y: 0 } };
  }

  // scheduleDraw redraws the edges on the next frame (once, however often
  // it is asked).
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(function () { drawPending = false; drawEdges(); });
  }

  function drawEdges() {
    const cy = mg.cy;
    if (!cy || !edgeCanvas) return;
    const box = $('cy');
    const ratio = window.devicePixelRatio || 1;
    const w = box.clientWidth, h = box.clientHeight;
    if (edgeCanvas.width !== Math.round(w * ratio) || edgeCanvas.height !== Math.round(h * ratio)) {
      edgeCanvas.width = Math.round(w * ratio);
      edgeCanvas.height = Math.round(h * ratio);
      edgeCanvas.style.width = w + 'px';
      edgeCanvas.style.height = h + 'px';
    }
    const ctx = edgeCanvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, edgeCanvas.width, edgeCanvas.height);
    const z = cy.zoom(), pan = cy.pan();
    ctx.setTransform(ratio * z, 0, 0, ratio * z, ratio * pan.x, ratio * pan.y);
    const now = serverNow();
    const vis = visibleSet();
    const arrows = st.edges.size <= BIG;
    const groups = {};
    const marked = [];
    edgeCls.clear();
    for (const e of st.edges.values()) {
      if (vis && !(vis.core.has(e.s) || vis.core.has(e.t))) continue;
      const a = nodePos.get(e.s), b = nodePos.get(e.t);
      if (!a || !b) continue;
      const cls = edgeClass(e, now);
      edgeCls.set(e.id, cls + (e.new ? ' new' : ''));
      const wd = Math.round(edgeWidth(e, now)) + (arrows ? 1 : 0);
      const k = cls + ':' + wd + ':' + (e.new ? 1 : 0);
      (groups[k] || (groups[k] = [])).push([a, b]);
      if (e.new) marked.push([a, b, wd]);
    }
    // Edges not in the baseline: a halo under them, and dashed.
    ctx.lineCap = 'round';
    ctx.strokeStyle = 'rgba(30, 136, 229, 0.35)';
    for (const m of marked) {
      ctx.lineWidth = m[2] + 6;
      ctx.beginPath(); ctx.moveTo(m[0].x, m[0].y); ctx.lineTo(m[1].x, m[1].y); ctx.stroke();
    }
    for (const cls of ORDER) {
      for (const k of Object.keys(groups)) {
        const parts = k.split(':');
        if (parts[0] !== cls) continue;
        const wd = +parts[1];
        ctx.strokeStyle = COLORS[cls];
        ctx.fillStyle = COLORS[cls];
        ctx.lineWidth = wd;
        ctx.setLineDash(parts[2] === '1' ? [7, 5] : []);
        ctx.beginPath();
        for (const seg of groups[k]) { ctx.moveTo(seg[0].x, seg[0].y); ctx.lineTo(seg[1].x, seg[1].y); }
        ctx.stroke();
        ctx.setLineDash([]);
        if (arrows) {
          ctx.beginPath();
          for (const seg of groups[k]) arrowHead(ctx, seg[0], seg[1], wd);
          ctx.fill();
        }
      }
    }
    settle();
  }

  function arrowHead(ctx, a, b, wd) {
    const dx = b.x - a.x, dy = b.y - a.y;
    const len = Math.sqrt(dx * dx + dy * dy);
    if (len < 30) return;
    const ux = dx / len, uy = dy / len;
    const tipX = b.x - ux * 11, tipY = b.y - uy * 11; // the node's edge
    const size = 7 + wd;
    ctx.moveTo(tipX, tipY);
    ctx.lineTo(tipX - ux * size - uy * size * 0.5, tipY - uy * size + ux * size * 0.5);
    ctx.lineTo(tipX - ux * size + uy * size * 0.5, tipY - uy * size - ux * size * 0.5);
    ctx.closePath();
  }

  // edgeAt finds the edge nearest a point of the graph, within a few
  // pixels.
  function edgeAt(p) {
    const cy = mg.cy;
    const tol = 5 / cy.zoom();
    const vis = visibleSet();
    let best = null, bestD = tol * tol;
    for (const e of st.edges.values()) {
      if (vis && !(vis.core.has(e.s) || vis.core.has(e.t))) continue;
      const a = nodePos.get(e.s), b = nodePos.get(e.t);
      if (!a || !b) continue;
      const dx = b.x - a.x, dy = b.y - a.y;
      const l2 = dx * dx + dy * dy || 1;
      let t = ((p.x - a.x) * dx + (p.y - a.y) * dy) / l2;
      t = Math.max(0, Math.min(1, t));
      const ex = a.x + t * dx - p.x, ey = a.y + t * dy - p.y;
      const d2 = ex * ex + ey * ey;
      if (d2 < bestD) { bestD = d2; best = e.id; }
    }
    return best;
  }

  const nodePos = new Map(); // node id → position in the graph

  function buildGraph(snap) {
    const t0 = performance.now();
    st.nodes.clear(); st.edges.clear(); st.byPair.clear(); st.nsSet.clear(); edgeCls.clear();
    for (const n of snap.nodes) { st.nodes.set(n.id, n); st.nsSet.add(nsOf(n)); }
    for (const e of snap.edges) { st.edges.set(e.id, e); st.byPair.set(e.s + '\n' + e.t, e.id); }
    const pos = layout();
    nodePos.clear();
    for (const [id, p] of pos) nodePos.set(id, p);
    const els = [];
    for (const ns of st.nsSet) els.push(nsElement(ns, pos.get('ns:' + ns)));
    for (const n of st.nodes.values()) els.push(nodeElement(n, pos.get(n.id)));
    if (mg.cy) mg.cy.destroy();
    const box = $('cy');
    if (!edgeCanvas) {
      edgeCanvas = document.createElement('canvas');
      edgeCanvas.className = 'edges';
      box.appendChild(edgeCanvas);
    }
    const cy = cytoscape({
      container: box, elements: els, style: style(), layout: { name: 'preset' },
      boxSelectionEnabled: false, motionBlur: false, minZoom: 0.02, maxZoom: 4,
    });
    mg.cy = cy;
    cy.fit(undefined, 30);
    if (cy.zoom() > 1.6) { cy.zoom(1.6); cy.center(); }
    cy.on('tap', 'node', function (ev) {
      const id = ev.target.id();
      if (id.indexOf('ns:') === 0) { setNsFilter(id.slice(3)); return; }
      location.hash = '#/identity/' + encodeURIComponent(id);
    });
    cy.on('tap', function (ev) {
      if (ev.target !== cy) return;
      const id = edgeAt(ev.position);
      if (id) showEdge(id); else $('edge-info').hidden = true;
    });
    cy.on('viewport resize', scheduleDraw);
    cy.on('position', 'node', function (ev) { nodePos.set(ev.target.id(), Object.assign({}, ev.target.position())); scheduleDraw(); });
    refreshNsOptions();
    applyFilter();
    mg.buildMs = performance.now() - t0;
    mg.nodes = st.nodes.size;
    mg.edges = st.edges.size;
    updateCounts();
    drawEdges();
    if (mg.firstPaintMs === null) {
      cy.one('render', function () {
        requestAnimationFrame(function () { mg.firstPaintMs = performance.now(); });
      });
    }
  }

  function applyDelta(d) {
    const cy = mg.cy;
    if (!cy) return;
    const t0 = performance.now();
    let relayout = false;
    cy.batch(function () {
      for (const n of d.nodes || []) {
        const had = st.nodes.has(n.id);
        st.nodes.set(n.id, n);
        const ns = nsOf(n);
        if (!st.nsSet.has(ns)) { st.nsSet.add(ns); cy.add(nsElement(ns)); refreshNsOptions(); }
        if (!had) { cy.add(nodeElement(n, { x: 0, y: 0 })); relayout = true; continue; }
        const ce = cy.getElementById(n.id);
        ce.data('label', n.name);
        ce.classes(nodeClasses(n));
      }
    });
    for (const e of d.edges || []) {
      st.edges.set(e.id, e);
      st.byPair.set(e.s + '\n' + e.t, e.id);
    }
    if (relayout) {
      const pos = layout();
      cy.batch(function () {
        for (const [id, p] of pos) cy.getElementById(id).position(p);
      });
      for (const [id, p] of pos) nodePos.set(id, p);
    }
    if ((d.nodes && d.nodes.length) || relayout) applyFilter();
    scheduleDraw();
    mg.nodes = st.nodes.size;
    mg.edges = st.edges.size;
    updateCounts();
    mg.lastApplyMs = performance.now() - t0;
  }

  // Rates decay with no update from the server: redraw now and then.
  function decay() { scheduleDraw(); }

  function updateCounts() {
    let q = 0;
    for (const n of st.nodes.values()) if (n.q) q++;
    $('counts').textContent = st.nodes.size + ' workloads · ' + st.edges.size + ' edges · ' + q + ' quarantined';
  }

  // ----- filters -----
  function refreshNsOptions() {
    const sel = $('filter-ns');
    const cur = sel.value;
    const names = Array.from(st.nsSet).sort();
    clear(sel);
    sel.appendChild(new Option('all', ''));
    for (const ns of names) sel.appendChild(new Option(ns, ns));
    sel.value = names.indexOf(cur) >= 0 ? cur : '';
  }
  function setNsFilter(ns) {
    $('filter-ns').value = ns;
    st.filterNs = ns;
    applyFilter();
    renderFeed();
  }
  function matches(n) {
    if (st.filterNs && nsOf(n) !== st.filterNs) return false;
    if (st.filterId) {
      const f = st.filterId.toLowerCase();
      if (n.id.toLowerCase().indexOf(f) < 0 && n.name.toLowerCase().indexOf(f) < 0) return false;
    }
    return true;
  }
  function filtering() { return st.filterNs !== '' || st.filterId !== ''; }
  function visibleSet() {
    if (!filtering()) return null;
    const vis = new Set();
    for (const n of st.nodes.values()) if (matches(n)) vis.add(n.id);
    const core = new Set(vis);
    for (const e of st.edges.values()) {
      if (core.has(e.s)) vis.add(e.t);
      if (core.has(e.t)) vis.add(e.s);
    }
    return { vis: vis, core: core };
  }
  // applyFilter hides the workloads the filters leave out; the edge layer
  // draws the edges of the matching workloads only.
  function applyFilter() {
    const cy = mg.cy;
    if (!cy) return;
    const v = visibleSet();
    cy.batch(function () {
      if (!v) { cy.nodes('.hidden').removeClass('hidden'); scheduleDraw(); return; }
      const shownNs = new Set();
      for (const id of v.vis) { const n = st.nodes.get(id); if (n) shownNs.add(nsOf(n)); }
      const hide = [], show = [];
      cy.nodes().forEach(function (n) {
        const id = n.id();
        const visible = id.indexOf('ns:') === 0 ? shownNs.has(n.data('label')) : v.vis.has(id);
        if (visible === n.hasClass('hidden')) (visible ? show : hide).push(n);
      });
      cy.collection(hide).addClass('hidden');
      cy.collection(show).removeClass('hidden');
    });
    scheduleDraw();
  }
  // feedVisible: v is visibleSet(), computed once per batch of entries.
  function feedVisible(f, v) {
    if (!v) return true;
    return v.core.has(f.src) || v.core.has(f.dst);
  }

  // ----- edge details -----
  function showEdge(id) {
    const e = st.edges.get(id);
    if (!e) return;
    const dl = $('edge-dl');
    clear(dl);
    const now = serverNow();
    function row(k, v) { dl.appendChild(el('dt', '', k)); const dd = el('dd'); if (v instanceof Node) dd.appendChild(v); else dd.textContent = v; dl.appendChild(dd); }
    row('from', idLink(e.s, e.s));
    row('to', idLink(e.t, e.t));
    row('state', edgeClass(e, now) + (e.new ? ', not in the traffic baseline' : ''));
    row('req/s', 'allowed ' + fmtRate(rateNow(e, 0, now)) + ' · denied ' + fmtRate(rateNow(e, 1, now)) +
      ' · dry-run ' + fmtRate(rateNow(e, 2, now)) + ' · anomalous ' + fmtRate(rateNow(e, 3, now)));
    row('totals', 'allowed ' + e.n[0] + ' · denied ' + e.n[1] + ' · dry-run ' + e.n[2] + ' · anomalies ' + e.n[3]);
    if (e.routes && e.routes.length) row('routes', e.routes.join(', '));
    if (e.last) row('last ' + e.last.kind, e.last.reason + (e.last.policy ? ' · ' + e.last.policy + (e.last.rule ? '#' + e.last.rule : '') : '') + ' · ' + fmtTime(e.last.t));
    $('edge-info').hidden = false;
  }

  // ----- feed -----
  function feedItem(f) {
    const li = el('li', 'fe fe-' + f.kind);
    li.dataset.seq = String(f.seq);
    li.appendChild(el('span', 'fe-time', fmtTime(f.t)));
    li.appendChild(el('span', 'fe-kind', f.kind));
    const who = el('span', 'fe-who');
    if (f.src) who.appendChild(idLink(f.src));
    if (f.dst && f.dst !== f.src) { who.appendChild(el('span', 'arrow', ' → ')); who.appendChild(idLink(f.dst)); }
    li.appendChild(who);
    const parts = [];
    if (f.count && f.count > 1 && (f.kind === 'deny' || f.kind === 'dry-run')) parts.push('×' + f.count + (f.first ? ' since ' + fmtTime(f.first) : ''));
    if (f.route) parts.push('route ' + f.route);
    if (f.svc) parts.push('service ' + f.svc);
    if (f.detector) parts.push(f.detector + (f.response ? ' → ' + f.response : ''));
    if (f.reason) parts.push(f.reason);
    if (f.policy) parts.push(f.policy + (f.rule ? '#' + f.rule : ''));
    if (f.by) parts.push('by ' + f.by);
    if (f.detail) parts.push(f.detail);
    if (f.expires) parts.push('until ' + fmtTime(f.expires));
    li.appendChild(el('span', 'fe-what', parts.join(' · ')));
    return li;
  }
  // Denials and would-denies of one caller, workload, route and rule come
  // every report (a second or less): within COALESCE_MS they fold into one
  // line that counts them.
  const COALESCE_MS = 30000;
  let folds = new Map(); // key → { f: merged entry, li }
  function foldKey(f) {
    if (f.kind !== 'deny' && f.kind !== 'dry-run') return null;
    return [f.kind, f.src, f.dst, f.route, f.reason, f.policy, f.rule].join('\n');
  }
  function showEntry(list, f) {
    const k = foldKey(f);
    const prev = k ? folds.get(k) : null;
    if (prev && f.t - prev.f.t < COALESCE_MS) {
      const merged = Object.assign({}, f, { count: (prev.f.count || 1) + (f.count || 1), first: prev.f.first || prev.f.t });
      if (prev.li.parentNode === list) list.removeChild(prev.li);
      const li = feedItem(merged);
      list.insertBefore(li, list.firstChild);
      folds.set(k, { f: merged, li: li });
      return;
    }
    const li = feedItem(f);
    list.insertBefore(li, list.firstChild);
    if (k) folds.set(k, { f: f, li: li });
  }
  function trimFeed(list) {
    while (list.childElementCount > FEED_MAX) list.removeChild(list.lastChild);
    if (folds.size > 2000) folds = new Map();
  }
  function addFeed(entries) {
    const list = $('feed');
    const v = visibleSet();
    for (const f of entries) {
      st.feed.push(f);
      if (feedVisible(f, v)) showEntry(list, f);
    }
    if (st.feed.length > 1000) st.feed.splice(0, st.feed.length - 1000);
    trimFeed(list);
  }
  function renderFeed() {
    const list = $('feed');
    clear(list);
    folds = new Map();
    const v = visibleSet();
    for (const f of st.feed) if (feedVisible(f, v)) showEntry(list, f);
    trimFeed(list);
  }

  // ----- live stream -----
  function connect() {
    const es = new EventSource('api/stream');
    const conn = $('conn');
    es.addEventListener('open', function () { conn.textContent = 'live'; conn.className = 'conn conn-on'; });
    es.addEventListener('error', function () {
      conn.textContent = 'reconnecting'; conn.className = 'conn conn-off';
      // A 401 closes the stream for good: check the session.
      if (es.readyState === EventSource.CLOSED) api('session').then(function () { setTimeout(connect, 2000); }, function () {});
    });
    es.addEventListener('snapshot', function (ev) {
      const snap = JSON.parse(ev.data);
      st.offset = snap.at - Date.now();
      st.tau = snap.tau || 60;
      st.seq = snap.seq;
      mg.snapshotMs = performance.now();
      buildGraph(snap);
      st.feed = [];
      clear($('feed'));
      addFeed(snap.feed || []);
      settle();
    });
    es.addEventListener('delta', function (ev) {
      const d = JSON.parse(ev.data);
      if (d.seq <= st.seq) return; // already in the snapshot
      st.seq = d.seq;
      st.offset = d.at - Date.now();
      applyDelta(d);
      if (d.feed && d.feed.length) addFeed(d.feed);
      mg.deltas++;
      mg.lastDeltaAppliedMs = wallNow();
      if (st.view === 'identity' && st.identity && touches(d, st.identity)) scheduleIdentityRefresh();
      settle();
    });
  }
  function touches(d, id) {
    for (const n of d.nodes || []) if (n.id === id) return true;
    for (const e of d.edges || []) if (e.s === id || e.t === id) return true;
    for (const f of d.feed || []) if (f.src === id || f.dst === id) return true;
    return false;
  }

  // ----- waiting on the page, for tests and people alike -----
  // __mg.when(pred) resolves with the wall-clock time (ms) of the first
  // animation frame after pred() became true.
  function settle() {
    if (!st.waiters.length) return;
    const keep = [];
    for (const w of st.waiters) {
      let ok = false;
      try { ok = w.pred(); } catch (e) { ok = false; }
      if (ok) requestAnimationFrame(function () { w.resolve(wallNow()); });
      else keep.push(w);
    }
    st.waiters = keep;
  }
  mg.when = function (pred) {
    return new Promise(function (resolve) { st.waiters.push({ pred: pred, resolve: resolve }); settle(); });
  };
  // edgeClass is the class the edge was last drawn with ('' when not
  // drawn: unknown, or filtered out).
  mg.edgeClass = function (src, dst) {
    const id = st.byPair.get(src + '\n' + dst);
    return id ? (edgeCls.get(id) || '') : '';
  };
  mg.drawnEdges = function () { return edgeCls.size; };
  mg.nodeClass = function (id) {
    if (!mg.cy) return '';
    const ce = mg.cy.getElementById(id);
    return ce.length ? ce.classes().join(' ') : '';
  };
  mg.nodeLabel = function (id) {
    if (!mg.cy) return null;
    const ce = mg.cy.getElementById(id);
    return ce.length ? ce.data('label') : null;
  };
  mg.feedText = function () { return $('feed').textContent; };
  mg.csrf = function () { return st.session ? st.session.csrf : ''; };
  mg.phases = function () {
    const nav = performance.getEntriesByType('navigation')[0];
    const lib = performance.getEntriesByName(new URL('assets/vendor/cytoscape/cytoscape.min.js', location.href).href)[0];
    return { domContentLoaded: nav ? nav.domContentLoadedEventEnd : -1, libLoaded: lib ? lib.responseEnd : -1,
      snapshot: mg.snapshotMs, build: mg.buildMs, firstPaint: mg.firstPaintMs };
  };
  // timeFilter applies a namespace filter and resolves with the time until
  // the next frame, in ms.
  mg.timeFilter = function (ns) {
    return new Promise(function (resolve) {
      const t0 = performance.now();
      setNsFilter(ns);
      requestAnimationFrame(function () { resolve(performance.now() - t0); });
    });
  };

  // ----- identity page -----
  let refreshTimer = null;
  function scheduleIdentityRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () { refreshTimer = null; if (st.view === 'identity') loadIdentity(st.identity); }, 400);
  }

  function showView(name) {
    st.view = name;
    $('view-graph').hidden = name !== 'graph';
    $('view-identity').hidden = name !== 'identity';
    if (name === 'graph' && mg.cy) { mg.cy.resize(); }
  }

  async function loadIdentity(id) {
    const r = await api('identity?id=' + encodeURIComponent(id));
    const errBox = $('id-error');
    if (r.status !== 200) {
      clear($('id-title'));
      $('id-title').textContent = id;
      errBox.textContent = (r.data && r.data.error ? r.data.error : 'error ' + r.status) + ': ' + id;
      errBox.hidden = false;
      for (const t of ['id-edges', 'id-recent', 'id-history', 'id-timeline', 'id-policies']) clear($(t));
      $('btn-quarantine').hidden = true; $('btn-release').hidden = true;
      return;
    }
    errBox.hidden = true;
    renderIdentity(r.data);
  }

  function cell(tr, v, cls) {
    const td = el('td', cls || '');
    if (v instanceof Node) td.appendChild(v); else td.textContent = v === undefined || v === null ? '' : String(v);
    tr.appendChild(td);
    return td;
  }

  function renderIdentity(p) {
    st.identityPage = p;
    const v = p.view;
    const node = v ? v.node : null;
    $('id-title').textContent = node ? node.name : p.identity;
    const sub = $('id-sub');
    clear(sub);
    sub.appendChild(el('code', '', p.identity));
    if (node && node.ns) sub.appendChild(el('span', 'tag', 'namespace ' + node.ns));
    if (v && v.service) sub.appendChild(el('span', 'tag', 'service ' + v.service));
    if (v && v.labels) for (const k of Object.keys(v.labels).sort()) sub.appendChild(el('span', 'tag', k + '=' + v.labels[k]));
    if (!p.seen) sub.appendChild(el('span', 'tag', 'no traffic seen'));

    const status = $('id-status');
    clear(status);
    if (p.quarantine) {
      status.className = 'status status-q';
      status.appendChild(el('strong', '', 'QUARANTINED'));
      status.appendChild(el('span', '', ' by ' + p.quarantine.by + ' · ' + p.quarantine.reason +
        (p.quarantine.expiresAt ? ' · until ' + new Date(p.quarantine.expiresAt).toLocaleString() : '') +
        (p.quarantine.pending ? ' · enforced here, not stored yet (retrying)' : '')));
      if (p.quarantine.evidence && p.quarantine.evidence.length) {
        const ul = el('ul', 'evidence');
        for (const ev of p.quarantine.evidence) {
          ul.appendChild(el('li', '', [ev.detector || 'report', 'from ' + ev.reporter, ev.route ? 'route ' + ev.route : '',
            ev.destination ? 'to ' + ev.destination : '', ev.detail || '', new Date(ev.received).toLocaleString()].filter(Boolean).join(' · ')));
        }
        status.appendChild(el('div', 'note', 'evidence:'));
        status.appendChild(ul);
      }
    } else {
      status.className = 'status';
      status.textContent = 'not quarantined';
    }
    const op = st.session && st.session.role === 'operator';
    const qb = $('btn-quarantine'), rb = $('btn-release');
    qb.hidden = !!p.quarantine || p.identity === 'unauthenticated';
    rb.hidden = !p.quarantine;
    qb.disabled = !op; rb.disabled = !op;
    qb.title = op ? '' : 'needs the operator role';
    rb.title = qb.title;
    $('readonly-note').hidden = op;

    const now = serverNow();
    const edges = $('id-edges');
    clear(edges);
    const rows = [];
    if (v) {
      for (const e of v.out) rows.push(['calls', e.t, e]);
      for (const e of v.in) rows.push(['called by', e.s, e]);
    }
    for (const r of rows) {
      const e = r[2];
      const tr = el('tr', 'edge-' + edgeClass(e, now));
      cell(tr, r[0]);
      cell(tr, idLink(r[1]));
      cell(tr, edgeClass(e, now) + (e.new ? ' · new' : ''));
      let total = 0;
      for (let i = 0; i < 4; i++) total += rateNow(e, i, now);
      cell(tr, fmtRate(total));
      cell(tr, (e.routes || []).join(', '));
      cell(tr, e.last ? e.last.reason + (e.last.policy ? ' · ' + e.last.policy + (e.last.rule ? '#' + e.last.rule : '') : '') : '');
      edges.appendChild(tr);
    }
    if (!rows.length) { const tr = el('tr'); cell(tr, 'no edges seen').colSpan = 6; edges.appendChild(tr); }

    const recent = $('id-recent');
    clear(recent);
    for (const f of (v ? v.recent : [])) recent.appendChild(feedItem(f));
    if (!recent.childElementCount) recent.appendChild(el('li', 'note', 'nothing yet'));

    const hist = $('id-history');
    clear(hist);
    for (const h of p.history) {
      const tr = el('tr');
      cell(tr, new Date(h.time).toLocaleString());
      cell(tr, h.action);
      cell(tr, h.by);
      cell(tr, h.reason || '');
      cell(tr, h.expiresAt ? new Date(h.expiresAt).toLocaleString() : '');
      hist.appendChild(tr);
    }
    if (!p.history.length) { const tr = el('tr'); cell(tr, 'never quarantined').colSpan = 5; hist.appendChild(tr); }

    const tl = $('id-timeline');
    clear(tl);
    const tlNote = $('id-timeline-note');
    if (!p.timeline.available) {
      tlNote.textContent = 'No event store is connected: the recent decisions and detections above are what the control plane received since it started.';
    } else if (p.timeline.error) {
      tlNote.textContent = p.timeline.error;
    } else {
      tlNote.textContent = '';
      for (const t of p.timeline.entries || []) {
        const li = el('li', 'fe fe-' + t.kind);
        li.appendChild(el('span', 'fe-time', new Date(t.time).toLocaleString()));
        li.appendChild(el('span', 'fe-kind', t.action ? t.kind + ' ' + t.action : t.kind));
        const req = [t.method, t.path].filter(Boolean).join(' ');
        const parts = [t.src && t.dst ? t.src + ' → ' + t.dst : t.src || t.dst, t.route, req, t.count > 1 ? '×' + t.count : '',
          t.reason, t.policy ? t.policy + (t.rule ? '#' + t.rule : '') : '', t.by ? 'by ' + t.by : '', t.detail].filter(Boolean);
        li.appendChild(el('span', 'fe-what', parts.join(' · ')));
        tl.appendChild(li);
      }
    }

    const pol = $('id-policies');
    clear(pol);
    const pn = $('id-pol-note');
    if (!p.policies) {
      pn.textContent = 'No policy bundle is being served.';
    } else {
      const a = p.policies.applied;
      let note = 'bundle ' + p.policies.version + ' · scopes: ' + (a.scopes && a.scopes.length ? a.scopes.join(', ') : 'none');
      if (a.defaultDeny && a.defaultDeny.length) note += ' · default deny: ' + a.defaultDeny.map(function (r) { return r.Policy || r.policy; }).join(', ');
      if (p.policies.quarantined) note += ' · the bundle quarantines it: ' + p.policies.quarantined;
      if (p.policies.target.unresolved) note += ' · not in the mesh description: its labels and service are unknown';
      if (a.unresolved) note += ' · a request to it is denied (denied_unresolved_target): ' + a.unresolved;
      pn.textContent = note;
      for (const r of a.rules || []) {
        const tr = el('tr', 'act-' + r.action.toLowerCase());
        cell(tr, r.action); cell(tr, r.policy); cell(tr, r.rule); cell(tr, r.mode); cell(tr, r.scope);
        pol.appendChild(tr);
      }
      for (const ro of p.policies.routeOverrides || []) {
        const tr = el('tr', 'act-route');
        cell(tr, 'route'); cell(tr, 'RouteOverride for route ' + ro.route); cell(tr, ro.action || ''); cell(tr, ro.mode || ''); cell(tr, 'route');
        pol.appendChild(tr);
      }
      if (!pol.childElementCount) { const tr = el('tr'); cell(tr, 'no rule applies').colSpan = 5; pol.appendChild(tr); }
    }
    settle();
  }

  // ----- confirmation dialog -----
  function confirmAction(kind) {
    const p = st.identityPage;
    if (!p) return;
    const dlg = $('confirm');
    $('confirm-title').textContent = kind === 'quarantine' ? 'Quarantine this identity mesh-wide?' : 'Release the quarantine?';
    $('confirm-text').textContent = (kind === 'quarantine'
      ? 'Every workload will deny requests from '
      : 'Workloads will again decide requests from ') + p.identity + '.';
    $('confirm-reason').value = '';
    $('confirm-duration').value = '';
    $('confirm-dur-label').hidden = kind !== 'quarantine';
    $('confirm-error').hidden = true;
    $('confirm-ok').textContent = kind === 'quarantine' ? 'Quarantine' : 'Release';
    dlg.dataset.kind = kind;
    dlg.showModal();
    $('confirm-reason').focus();
  }
  async function confirmed(ev) {
    ev.preventDefault();
    const dlg = $('confirm');
    const kind = dlg.dataset.kind;
    const p = st.identityPage;
    const body = { identity: p.identity, reason: $('confirm-reason').value };
    if (kind === 'quarantine' && $('confirm-duration').value.trim()) body.duration = $('confirm-duration').value.trim();
    const r = await api(kind, { body: body });
    if (r.status === 200 || r.status === 204) {
      dlg.close();
      loadIdentity(p.identity);
      return;
    }
    const box = $('confirm-error');
    box.textContent = (r.data && r.data.error) ? r.data.error : 'refused (' + r.status + ')';
    box.hidden = false;
  }

  // ----- explain -----
  async function explain(ev) {
    ev.preventDefault();
    const p = st.identityPage;
    if (!p || !p.policies) return;
    const f = ev.target;
    const req = {
      method: f.method.value.trim(), path: f.path.value,
      target: p.policies.target,
    };
    if (f.source.value.trim()) req.source = f.source.value.trim();
    if (f.host.value.trim()) req.host = f.host.value.trim();
    if (f.route.value.trim()) req.route = f.route.value.trim();
    const r = await api('explain', { body: req });
    const out = $('explain-out');
    clear(out);
    if (r.status !== 200) {
      out.appendChild(el('div', 'error', (r.data && r.data.error) ? r.data.error : 'error ' + r.status));
      return;
    }
    const d = r.data.decision;
    const head = el('div', d.allowed ? (d.wouldDeny ? 'verdict verdict-dry' : 'verdict verdict-allow') : 'verdict verdict-deny',
      (d.allowed ? (d.wouldDeny ? 'ALLOW (dry-run: enforced, it would be denied)' : 'ALLOW') : 'DENY') + ' · ' + d.reason +
      (d.policy ? ' · ' + d.policy + (d.rule ? '#' + d.rule : '') : '') + ' · bundle ' + d.version);
    out.appendChild(head);
    out.appendChild(el('div', 'note', 'request: ' + (r.data.request.method || '') + ' ' + (r.data.request.path || '') +
      ' from ' + (r.data.request.source || 'an unauthenticated caller')));
    const tr = r.data.trace;
    if (tr.notes) for (const n of tr.notes) out.appendChild(el('div', 'note', n));
    const tbl = el('table', 'tbl');
    const th = el('tr');
    for (const h of ['', 'action', 'policy', 'rule', 'mode', 'why']) th.appendChild(el('th', '', h));
    tbl.appendChild(th);
    for (const s of tr.steps || []) {
      const row = el('tr', s.matched ? 'matched' : '');
      cell(row, s.matched ? 'MATCH' : 'no match'); cell(row, s.action); cell(row, s.policy); cell(row, s.rule); cell(row, s.mode); cell(row, s.why || '');
      tbl.appendChild(row);
    }
    out.appendChild(tbl);
  }

  // ----- routing -----
  function route() {
    const h = location.hash;
    if (h.indexOf('#/identity/') === 0) {
      let id;
      try { id = decodeURIComponent(h.slice('#/identity/'.length)); } catch (e) { id = h.slice('#/identity/'.length); }
      st.identity = id;
      showView('identity');
      clear($('explain-out'));
      loadIdentity(id);
      return;
    }
    st.identity = null;
    showView('graph');
  }

  async function start() {
    const r = await api('session');
    if (r.status !== 200) return;
    st.session = r.data;
    $('who').textContent = r.data.subject + ' · ' + r.data.role;
    $('logout').addEventListener('click', async function () {
      await api('logout', { body: {} });
      location.replace('login');
    });
    $('filter-ns').addEventListener('change', function (ev) { st.filterNs = ev.target.value; applyFilter(); renderFeed(); });
    let t = null;
    $('filter-id').addEventListener('input', function (ev) {
      clearTimeout(t);
      t = setTimeout(function () { st.filterId = ev.target.value.trim(); applyFilter(); renderFeed(); }, 150);
    });
    $('btn-quarantine').addEventListener('click', function () { confirmAction('quarantine'); });
    $('btn-release').addEventListener('click', function () { confirmAction('release'); });
    $('confirm-form').addEventListener('submit', confirmed);
    $('confirm-cancel').addEventListener('click', function () { $('confirm').close(); });
    $('explain-form').addEventListener('submit', explain);
    window.addEventListener('hashchange', route);
    route();
    connect();
    setInterval(decay, 5000);
  }

  start();
})();
