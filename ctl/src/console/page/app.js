// The Warden console. Polls the console's JSON API and draws the service graph as SVG.
// Everything that comes from the mesh (names, SPIFFE IDs, policy text, audit rows) is
// attacker-influenced: it goes into the page with textContent and setAttribute only.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const POLL_MS = 2000;
const NODE_W = 190;
const NODE_H = 58;
const COL_GAP = 130;
const ROW_GAP = 26;
const MARGIN = 24;

let selected = null; // {source, destination}
let lastGraph = null;

function h(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function s(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.json();
}

function fmtTime(secs) {
  if (secs === null || secs === undefined) return '—';
  return new Date(secs * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function fmtIn(secs) {
  if (secs === null || secs === undefined) return '';
  let d = Math.round(secs - Date.now() / 1000);
  const past = d < 0;
  d = Math.abs(d);
  const parts = [];
  if (d >= 365 * 86400) { parts.push(Math.floor(d / (365 * 86400)) + 'y'); d %= 365 * 86400; }
  if (d >= 86400) { parts.push(Math.floor(d / 86400) + 'd'); d %= 86400; }
  if (d >= 3600 && parts.length < 2) { parts.push(Math.floor(d / 3600) + 'h'); d %= 3600; }
  if (d >= 60 && parts.length < 2) { parts.push(Math.floor(d / 60) + 'm'); d %= 60; }
  if (parts.length === 0) parts.push(d + 's');
  return past ? parts.join(' ') + ' ago' : 'in ' + parts.join(' ');
}

function fmtRate(r) {
  if (r === null || r === undefined) return '… req/s';
  return (r >= 10 ? r.toFixed(0) : r.toFixed(1)) + ' req/s';
}

function fmtCount(n) {
  return Number.isFinite(n) ? String(Math.round(n)) : '?';
}

// Layers: a node's column is the longest path to it from a node nobody calls (the
// gateway first, then productpage, then its callees...). Nodes without edges go in a
// row underneath.
function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const layer = new Map(ids.map((id) => [id, 0]));
  const linked = new Set();
  for (const e of edges) { linked.add(e.source); linked.add(e.destination); }
  // Relax at most |nodes| times: a cycle cannot push a node further than that.
  for (let i = 0; i < ids.length; i++) {
    let changed = false;
    for (const e of edges) {
      if (e.source === e.destination) continue;
      const want = (layer.get(e.source) || 0) + 1;
      if (want > (layer.get(e.destination) || 0) && want < ids.length) {
        layer.set(e.destination, want);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = new Map();
  const loose = [];
  for (const n of nodes) {
    if (!linked.has(n.id)) { loose.push(n.id); continue; }
    const col = layer.get(n.id);
    if (!columns.has(col)) columns.set(col, []);
    columns.get(col).push(n.id);
  }
  const tallest = Math.max(0, ...[...columns.values()].map((c) => c.length));
  const graphHeight = tallest ? tallest * NODE_H + (tallest - 1) * ROW_GAP : 0;
  const pos = new Map();
  let width = MARGIN * 2 + NODE_W;
  for (const [col, members] of [...columns.entries()].sort((a, b) => a[0] - b[0])) {
    members.sort();
    const colHeight = members.length * NODE_H + (members.length - 1) * ROW_GAP;
    const top = MARGIN + (graphHeight - colHeight) / 2;
    members.forEach((id, i) => {
      pos.set(id, { x: MARGIN + col * (NODE_W + COL_GAP), y: top + i * (NODE_H + ROW_GAP) });
    });
    width = Math.max(width, MARGIN * 2 + (col + 1) * NODE_W + col * COL_GAP);
  }
  // Workloads with no traffic yet: a row underneath, as many per row as columns fit.
  const perRow = Math.max(1, Math.floor((width - MARGIN * 2 + 30) / (NODE_W + 30)));
  loose.sort();
  const looseTop = MARGIN + graphHeight + (tallest ? ROW_GAP * 2 : 0);
  loose.forEach((id, i) => {
    pos.set(id, {
      x: MARGIN + (i % perRow) * (NODE_W + 30),
      y: looseTop + Math.floor(i / perRow) * (NODE_H + ROW_GAP),
    });
  });
  const looseRows = Math.ceil(loose.length / perRow);
  const height = looseRows
    ? looseTop + looseRows * NODE_H + (looseRows - 1) * ROW_GAP + MARGIN
    : MARGIN * 2 + graphHeight;
  return { pos, width, height };
}

// A point at `t` along the cubic Bézier p0..p3.
function bezier(t, p0, p1, p2, p3) {
  const u = 1 - t;
  return {
    x: u * u * u * p0.x + 3 * u * u * t * p1.x + 3 * u * t * t * p2.x + t * t * t * p3.x,
    y: u * u * u * p0.y + 3 * u * u * t * p1.y + 3 * u * t * t * p2.y + t * t * t * p3.y,
  };
}

function edgeKey(e) {
  return e.source + '\u2192' + e.destination;
}

function isSelected(e) {
  return selected && selected.source === e.source && selected.destination === e.destination;
}

function drawGraph(g) {
  const svg = document.getElementById('graph');
  const { pos, width, height } = layout(g.nodes, g.edges);
  svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('data-nodes', g.nodes.length);
  svg.setAttribute('data-edges', g.edges.length);
  svg.replaceChildren();
  const defs = s('defs');
  for (const state of ['ok', 'error', 'denied']) {
    const m = s('marker', {
      id: 'arrow-' + state, viewBox: '0 0 10 10', refX: 9, refY: 5,
      markerUnits: 'userSpaceOnUse', markerWidth: 11, markerHeight: 11, orient: 'auto-start-reverse',
    });
    m.appendChild(s('path', { d: 'M 0 0 L 10 5 L 0 10 z' }));
    defs.appendChild(m);
  }
  svg.appendChild(defs);

  const out = new Map();
  const into = new Map();
  for (const e of g.edges) {
    out.set(e.source, (out.get(e.source) || 0) + 1);
    into.set(e.destination, (into.get(e.destination) || 0) + 1);
  }
  const edgeLayer = s('g', { class: 'edges' });
  for (const e of g.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.destination);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2;
    const x2 = b.x, y2 = b.y + NODE_H / 2;
    let d;
    let labelAt;
    if (x2 > x1) {
      const mid = (x1 + x2) / 2;
      d = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2 - 2} ${y2}`;
      // Where edges fan out the label goes near the destination, so labels of
      // neighbouring edges do not overlap; elsewhere halfway.
      const t = (out.get(e.source) || 0) > (into.get(e.destination) || 0) ? 0.72 : 0.5;
      labelAt = bezier(t, { x: x1, y: y1 }, { x: mid, y: y1 }, { x: mid, y: y2 }, { x: x2, y: y2 });
    } else {
      // Backwards or within a column: loop around underneath.
      const drop = Math.max(y1, y2) + NODE_H;
      d = `M ${a.x + NODE_W / 2} ${a.y + NODE_H} C ${a.x + NODE_W / 2} ${drop}, ${b.x + NODE_W / 2} ${drop}, ${b.x + NODE_W / 2} ${b.y + NODE_H + 2}`;
      labelAt = { x: (a.x + b.x + NODE_W) / 2, y: drop - 12 };
    }
    const grp = s('g', {
      class: 'edge ' + e.state + (e.stale ? ' stale' : '') + (isSelected(e) ? ' selected' : ''),
      'data-source': e.source,
      'data-destination': e.destination,
      'data-state': e.state,
      'data-stale': String(Boolean(e.stale)),
      'data-total': fmtCount(e.total),
      'data-allowed': fmtCount(e.allowed),
      'data-denied': fmtCount(e.denied),
      'data-server-errors': fmtCount(e.server_errors),
      'data-rate': e.rate === null ? '' : e.rate.toFixed(3),
      tabindex: 0,
    });
    const title = s('title', {}, `${e.source} \u2192 ${e.destination}\n` +
      (e.stale ? 'last known numbers: the destination proxy does not answer\n' : '') +
      `${fmtRate(e.rate)} over ${Math.round(e.recent.seconds)} s\n` +
      `total ${fmtCount(e.total)}: ${fmtCount(e.allowed)} allowed, ${fmtCount(e.denied)} denied (403), ${fmtCount(e.server_errors)} 5xx\n` +
      `last ${Math.round(e.recent.seconds)} s: ${fmtCount(e.recent.denied)} denied, ${fmtCount(e.recent.server_errors)} 5xx`);
    grp.appendChild(title);
    grp.appendChild(s('path', { class: 'hit', d }));
    grp.appendChild(s('path', { class: 'line', d, 'marker-end': 'url(#arrow-' + e.state + ')' }));
    const label = [fmtRate(e.rate)];
    if (e.denied > 0) label.push(fmtCount(e.denied) + ' denied');
    if (e.server_errors > 0) label.push(fmtCount(e.server_errors) + ' 5xx');
    grp.appendChild(s('text', { x: labelAt.x, y: labelAt.y - 5, 'text-anchor': 'middle' }, label.join(' · ')));
    grp.addEventListener('click', () => selectEdge(e.source, e.destination));
    grp.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') selectEdge(e.source, e.destination);
    });
    edgeLayer.appendChild(grp);
  }

  const nodeLayer = s('g', { class: 'nodes' });
  for (const n of g.nodes) {
    const p = pos.get(n.id);
    const classes = ['node'];
    if (n.known === false) classes.push('unknown');
    if (n.reachable === false) classes.push('unreachable');
    const grp = s('g', {
      class: classes.join(' '),
      transform: `translate(${p.x} ${p.y})`,
      'data-id': n.id,
      'data-spiffe-id': n.spiffe_id || '',
      'data-reachable': n.reachable === null || n.reachable === undefined ? 'unknown' : String(n.reachable),
    });
    const tip = [n.id, n.spiffe_id || '(no SPIFFE ID known)'];
    if (n.address) tip.push('address ' + n.address);
    if (n.stats_url) tip.push('metrics ' + n.stats_url);
    if (n.admin_url) tip.push('admin ' + n.admin_url);
    if (n.error) tip.push('scrape failed: ' + n.error);
    if (n.authz && Object.keys(n.authz).length) {
      tip.push('authorization: ' + Object.entries(n.authz).map(([k, v]) => k + ' ' + fmtCount(v)).join(', '));
    }
    grp.appendChild(s('title', {}, tip.join('\n')));
    grp.appendChild(s('rect', { width: NODE_W, height: NODE_H, rx: 8 }));
    const name = n.name.length > 24 ? n.name.slice(0, 23) + '…' : n.name;
    grp.appendChild(s('text', { class: 'name', x: 10, y: 18 }, name));
    // The namespace beside the name when both fit (the SPIFFE ID names it anyway).
    if (name.length * 8.2 + n.namespace.length * 6.2 + 30 < NODE_W) {
      grp.appendChild(s('text', { class: 'ns', x: NODE_W - 10, y: 18, 'text-anchor': 'end' }, n.namespace));
    }
    const id = (n.spiffe_id || 'SPIFFE ID unknown').replace(/^spiffe:\/\//, '');
    grp.appendChild(s('text', { class: 'spiffe', x: 10, y: 34 }, id.length > 28 ? '…' + id.slice(-27) : id));
    if (n.reachable === false) {
      grp.appendChild(s('text', { class: 'problem', x: 10, y: 49 }, 'unreachable: scrape failed'));
    } else if (n.known === false) {
      grp.appendChild(s('text', { class: 'ns', x: 10, y: 49 }, 'not started by warden up'));
    } else if (n.authz && (n.authz.deny || n.authz.allow)) {
      grp.appendChild(s('text', { class: 'ns', x: 10, y: 49 },
        `authz: ${fmtCount(n.authz.allow || 0)} allowed, ${fmtCount(n.authz.deny || 0)} denied`));
    }
    nodeLayer.appendChild(grp);
  }
  svg.appendChild(edgeLayer);
  svg.appendChild(nodeLayer);
}

function drawWorkloads(g) {
  const body = document.querySelector('#workloads tbody');
  const rows = [];
  for (const n of g.nodes) {
    if (n.known === false) continue;
    const tr = h('tr', {
      class: 'workload' + (n.reachable === false ? ' unreachable' : ''),
      'data-id': n.id,
      'data-expiry': n.cert ? n.cert.expiry : '',
      'data-rotation-basis': n.cert ? n.cert.rotation_basis : '',
    });
    const name = h('td');
    name.appendChild(h('span', { class: 'wname' }, n.name));
    name.appendChild(h('span', { class: 'sub' }, n.namespace + (n.reachable === false ? ' · unreachable' : '')));
    name.appendChild(h('span', { class: 'sub mono spiffe' }, n.spiffe_id));
    if (n.error) name.appendChild(h('span', { class: 'sub error' }, n.error));
    tr.appendChild(name);
    const exp = h('td');
    const rot = h('td');
    if (n.cert) {
      exp.appendChild(h('span', {}, fmtIn(n.cert.expiry)));
      exp.appendChild(h('span', { class: 'sub' }, fmtTime(n.cert.expiry)));
      rot.appendChild(h('span', {}, fmtIn(n.cert.next_rotation)));
      const halfLife = n.cert.rotation_basis === 'half-life';
      rot.appendChild(h('span', {
        class: 'sub',
        title: halfLife
          ? 'The agent refreshes at half the lifetime; issued ' + fmtTime(n.cert.issued_at) + ' (serial ' + n.cert.serial + '), per the CA audit log'
          : 'The issue time is not in the CA audit log: expiry minus a third of the validity the console has seen',
      }, halfLife ? 'half-life (CA audit log)' : 'estimate (issue time unknown)'));
    } else {
      exp.appendChild(h('span', { class: 'muted' }, n.reachable === false ? 'unknown' : 'no SVID yet'));
    }
    tr.appendChild(exp);
    tr.appendChild(rot);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function drawAudit(a) {
  const err = document.getElementById('audit-error');
  err.hidden = !a.error;
  err.textContent = a.error ? 'cannot read the audit log: ' + a.error : '';
  const list = document.getElementById('audit');
  list.setAttribute('data-count', a.events.length);
  const items = a.events.map((ev) => {
    const li = h('li', { 'data-event': ev.event, 'data-seq': ev.seq });
    li.appendChild(h('span', { class: 'time' }, ev.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z') + ' '));
    li.appendChild(h('span', { class: 'event' }, ev.event + ' '));
    li.appendChild(h('span', { class: 'outcome-' + ev.outcome.replace(/[^a-z]/g, '') }, ev.outcome + ' '));
    li.appendChild(h('span', { class: 'identity mono' }, ev.identity || ''));
    li.setAttribute('title', 'requester ' + ev.requester + '\n' + JSON.stringify(ev.detail));
    return li;
  });
  if (items.length === 0 && !a.error) items.push(h('li', { class: 'muted' }, a.read ? 'no events yet' : 'reading…'));
  list.replaceChildren(...items);
}

async function selectEdge(source, destination) {
  selected = { source, destination };
  const hash = '#edge=' + encodeURIComponent(source) + '|' + encodeURIComponent(destination);
  if (location.hash !== hash) history.replaceState(null, '', hash);
  if (lastGraph) drawGraph(lastGraph);
  await refreshEdge();
}

async function refreshEdge() {
  if (!selected) return;
  const { source, destination } = selected;
  const panel = document.getElementById('edge-panel');
  panel.hidden = false;
  panel.setAttribute('data-source', source);
  panel.setAttribute('data-destination', destination);
  document.getElementById('edge-title').textContent = source + ' \u2192 ' + destination;
  const body = document.getElementById('edge-body');
  let v;
  try {
    v = await getJSON('/api/edge?source=' + encodeURIComponent(source) + '&destination=' + encodeURIComponent(destination));
  } catch (err) {
    body.replaceChildren(h('p', { class: 'error' }, String(err)));
    return;
  }
  if (!selected || selected.source !== source || selected.destination !== destination) return;
  const out = [];
  if (v.metrics) {
    const m = v.metrics;
    const kv = h('dl', { class: 'kv' });
    for (const [k, val] of [
      ['rate', fmtRate(m.rate)],
      ['requests', `${fmtCount(m.total)} (${fmtCount(m.allowed)} allowed, ${fmtCount(m.denied)} denied, ${fmtCount(m.server_errors)} 5xx)`],
      ['last ' + Math.round(m.recent.seconds) + ' s', `${fmtCount(m.recent.total)} requests, ${fmtCount(m.recent.denied)} denied, ${fmtCount(m.recent.server_errors)} 5xx`],
    ]) {
      kv.appendChild(h('dt', {}, k));
      kv.appendChild(h('dd', {}, val));
    }
    out.push(kv);
  }
  if (v.error) {
    panel.setAttribute('data-decision', 'error');
    out.push(h('p', { class: 'error' }, v.error));
    body.replaceChildren(...out);
    return;
  }
  panel.setAttribute('data-decision', v.decision);
  panel.setAttribute('data-policy', v.policy || '');
  const verdict = h('p', { class: 'verdict' });
  verdict.appendChild(h('span', { class: 'badge ' + v.decision }, v.decision));
  verdict.appendChild(document.createTextNode(' ' + v.reason));
  out.push(verdict);
  const req = h('p', { class: 'muted' });
  req.textContent = `Asked the engine about ${v.request.method} ${v.request.path} (host ${v.request.host}, port ${v.request.port}) from ` +
    `${v.request.source_principal || 'a plaintext peer'}: ${v.request.note}.`;
  out.push(req);
  const applying = v.explain.filter((e) => e.applies);
  const others = v.explain.filter((e) => !e.applies);
  out.push(h('h3', {}, applying.length ? 'Policies that select ' + destination : 'No policy selects ' + destination + ': every request is allowed'));
  const ul = h('ul', { class: 'policies' });
  for (const e of applying) ul.appendChild(policyItem(e, v.policy));
  out.push(ul);
  if (others.length) {
    const det = h('details');
    det.appendChild(h('summary', {}, others.length + ' other polic' + (others.length === 1 ? 'y' : 'ies') + ' in scope that do not select it'));
    const ul2 = h('ul', { class: 'policies' });
    for (const e of others) ul2.appendChild(policyItem(e, v.policy));
    det.appendChild(ul2);
    out.push(det);
  }
  body.replaceChildren(...out);
}

function policyItem(e, deciding) {
  const li = h('li', {
    class: 'policy ' + e.action + (e.matched_rule !== null ? ' matched' : ''),
    'data-policy': e.policy,
    'data-action': e.action,
    'data-applies': String(e.applies),
    'data-matched': String(e.matched_rule !== null),
    'data-deciding': String(e.policy === deciding),
  });
  li.appendChild(h('span', { class: 'badge ' + (e.dry_run ? 'dry' : e.action) }, e.dry_run ? e.action + ' (dry run)' : e.action));
  li.appendChild(h('span', { class: 'mono' }, ' ' + e.policy + (e.policy === deciding ? '  ← decides' : '')));
  li.appendChild(h('span', { class: 'why' }, e.why));
  return li;
}

async function poll() {
  const status = document.getElementById('status');
  try {
    const g = await getJSON('/api/graph');
    lastGraph = g;
    document.getElementById('window').textContent = String(g.window_seconds);
    drawGraph(g);
    drawWorkloads(g);
    status.textContent = 'updated ' + new Date().toLocaleTimeString() + ' · scraping every ' + g.scrape_interval_seconds + ' s';
    status.classList.remove('stale');
    status.setAttribute('data-loaded', 'true');
  } catch (err) {
    status.textContent = 'cannot reach the console: ' + err;
    status.classList.add('stale');
  }
  try {
    drawAudit(await getJSON('/api/audit'));
  } catch (err) {
    const e = document.getElementById('audit-error');
    e.hidden = false;
    e.textContent = String(err);
  }
  if (selected) await refreshEdge();
}

function start() {
  const m = /^#edge=([^|]*)\|(.*)$/.exec(location.hash);
  if (m) {
    try {
      selected = { source: decodeURIComponent(m[1]), destination: decodeURIComponent(m[2]) };
    } catch (_) {
      selected = null;
    }
  }
  poll();
  setInterval(poll, POLL_MS);
}

document.addEventListener('DOMContentLoaded', start);
