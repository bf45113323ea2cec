// Coherence dashboard: reads the verifier's read-only workload API on this (admin) port and
// redraws every 2 seconds. Plain JavaScript, no build step; charts are uPlot (vendored).
'use strict';

(function () {
  const POLL_MS = 2000;
  const TABLE_ROWS = 15;
  const RISK_LABELS = ['low', 'medium', 'high'];
  const RISK_ORDER = { high: 3, medium: 2, low: 1, insufficient_data: 0 };

  // What the page shows now; exposed so that a test (or a curious person) can read the data
  // behind every chart: `coherenceDashboard.charts.mean.data`.
  const state = {
    list: [],
    selected: null,
    summary: null,
    history: null,
    seriesKey: null,
    charts: {},
    chartKeys: {},
    updates: 0,
    lastError: null,
  };
  window.coherenceDashboard = state;

  const $ = (id) => document.getElementById(id);
  const fmt = (v, d) => (v === null || v === undefined || Number.isNaN(v) ? '—' : Number(v).toFixed(d));
  const wlKey = (w) => `${w.namespace}/${w.workload}`;
  const esc = encodeURIComponent;

  async function getJSON(path) {
    const r = await fetch(path, { cache: 'no-store' });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  function setStatus(kind, text) {
    const s = $('status');
    s.dataset.state = kind;
    s.textContent = text;
  }

  function riskText(r) {
    return r === 'insufficient_data' ? 'insufficient data' : (r || '—');
  }

  function fromHash() {
    const h = decodeURIComponent(location.hash.replace(/^#/, ''));
    return h.split('/').length === 2 ? h : null;
  }

  function defaultSelection(list) {
    const sorted = list.slice().sort((a, b) =>
      (RISK_ORDER[b.driftRisk] || 0) - (RISK_ORDER[a.driftRisk] || 0) || wlKey(a).localeCompare(wlKey(b)));
    return sorted.length ? wlKey(sorted[0]) : null;
  }

  function renderList() {
    const ul = $('workloads');
    ul.textContent = '';
    for (const w of state.list) {
      const li = document.createElement('li');
      const a = document.createElement('a');
      a.href = `#${wlKey(w)}`;
      a.className = 'wl' + (wlKey(w) === state.selected ? ' selected' : '');
      a.dataset.workload = wlKey(w);
      a.dataset.risk = w.driftRisk;
      const name = document.createElement('span');
      name.textContent = wlKey(w);
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.dataset.risk = w.driftRisk;
      badge.textContent = riskText(w.driftRisk);
      const meta = document.createElement('span');
      meta.className = 'muted small';
      meta.textContent = `${w.incidents} incident${w.incidents === 1 ? '' : 's'} · PCS ${w.pcs.accepted}/${w.pcs.escalated}/${w.pcs.rejected}`;
      a.append(name, badge, meta);
      li.append(a);
      ul.append(li);
    }
  }

  // Signal × window × pod combinations in the history, in first-seen order.
  function seriesKeys(history) {
    const keys = [];
    const seen = new Set();
    for (const p of history.points) {
      for (const w of p.windows) {
        const k = `${w.signal}|${w.window}|${p.pod}`;
        if (!seen.has(k)) {
          seen.add(k);
          keys.push(k);
        }
      }
    }
    return keys;
  }

  function renderSelect(keys) {
    const sel = $('signal-select');
    const pods = new Set(keys.map((k) => k.split('|')[2]));
    if (!state.seriesKey || !keys.includes(state.seriesKey)) {
      // Prefer cpu, then whatever came first.
      state.seriesKey = keys.find((k) => k.startsWith('cpu|')) || keys[0] || null;
    }
    const current = Array.from(sel.options).map((o) => o.value).join(',');
    if (current !== keys.join(',')) {
      sel.textContent = '';
      for (const k of keys) {
        const [signal, window, pod] = k.split('|');
        const o = document.createElement('option');
        o.value = k;
        o.textContent = pods.size > 1 ? `${signal} · ${window} · ${pod}` : `${signal} · ${window}`;
        sel.append(o);
      }
    }
    if (state.seriesKey) sel.value = state.seriesKey;
  }

  function windowOf(point, key) {
    const [signal, window, pod] = key.split('|');
    if (point.pod !== pod) return null;
    return point.windows.find((w) => w.signal === signal && w.window === window) || null;
  }

  function chartWidth(el) {
    return Math.max(240, Math.floor(el.clientWidth || el.parentElement.clientWidth || 480) - 4);
  }

  // Creates the chart the first time (or when its series change) and updates its data after.
  function draw(name, key, opts, data) {
    const el = $(`chart-${name}`);
    let u = state.charts[name];
    if (!u || state.chartKeys[name] !== key) {
      if (u) u.destroy();
      el.textContent = '';
      opts.width = chartWidth(el);
      opts.height = el.classList.contains('small-chart') ? 140 : 220;
      u = new uPlot(opts, data, el);
      state.charts[name] = u;
      state.chartKeys[name] = key;
    } else {
      u.setData(data);
    }
    el.dataset.points = String(data[0].length);
  }

  const xTime = { time: true };
  const axisColor = { stroke: '#9aa4b2', grid: { stroke: 'rgba(154,164,178,0.15)' }, ticks: { stroke: 'rgba(154,164,178,0.3)' } };

  function drawMean() {
    const pts = state.history.points;
    const key = state.seriesKey;
    const xs = [], up = [], mean = [], lo = [], rows = [];
    if (key) {
      for (const p of pts) {
        const w = windowOf(p, key);
        if (!w) continue;
        xs.push(p.atMs / 1000);
        mean.push(w.mean);
        up.push(w.mean + w.stdev);
        lo.push(w.mean - w.stdev);
        rows.push([p, w]);
      }
    }
    const [signal, window] = (key || '||').split('|');
    draw('mean', `${state.selected}|${key}`, {
      title: key ? `${signal} over ${window}` : 'no window statistics yet',
      scales: { x: xTime },
      series: [
        {},
        { label: 'μ + σ', stroke: 'rgba(96,165,250,0.6)', width: 1 },
        { label: 'mean μ', stroke: '#60a5fa', width: 2 },
        { label: 'μ − σ', stroke: 'rgba(96,165,250,0.6)', width: 1 },
      ],
      bands: [{ series: [1, 3], fill: 'rgba(96,165,250,0.18)' }],
      axes: [axisColor, axisColor],
    }, [xs, up, mean, lo]);
    renderTable(rows, signal, window);
  }

  function drawRisk() {
    const pts = state.history.points;
    const xs = pts.map((p) => p.atMs / 1000);
    const lv = pts.map((p) => (p.driftRiskLevel === null || p.driftRiskLevel === undefined ? null : p.driftRiskLevel));
    draw('risk', state.selected, {
      scales: { x: xTime, y: { range: [-0.2, 2.2] } },
      series: [
        {},
        {
          label: 'drift risk',
          stroke: '#f59e0b',
          width: 2,
          fill: 'rgba(245,158,11,0.12)',
          paths: uPlot.paths.stepped({ align: 1 }),
          value: (u, v) => (v === null || v === undefined ? '—' : RISK_LABELS[v]),
        },
      ],
      axes: [axisColor, Object.assign({}, axisColor, {
        splits: () => [0, 1, 2],
        values: (u, vals) => vals.map((v) => RISK_LABELS[v] || ''),
        size: 70,
      })],
    }, [xs, lv]);
  }

  function drawFti() {
    const pts = state.history.points;
    const th = state.history.meta.finopsThresholds || { ok: 1, warn: 1.05 };
    const xs = pts.map((p) => p.atMs / 1000);
    const fti = pts.map((p) => p.finops.fti);
    const avg = pts.map((p) => p.finops.ftiAvg);
    draw('fti', state.selected, {
      scales: { x: xTime },
      series: [
        {},
        { label: 'FTI (report)', stroke: '#a78bfa', width: 1, points: { show: true, size: 4 }, spanGaps: true },
        { label: 'FTI mean', stroke: '#c4b5fd', width: 2, spanGaps: true },
        { label: `OK ≤ ${th.ok}`, stroke: '#22c55e', width: 1, dash: [6, 4] },
        { label: `WARN ≤ ${th.warn}`, stroke: '#ef4444', width: 1, dash: [6, 4] },
      ],
      axes: [axisColor, axisColor],
    }, [xs, fti, avg, xs.map(() => th.ok), xs.map(() => th.warn)]);
    const rep = state.summary.finops && state.summary.finops.report;
    const g = $('grade');
    const grade = rep ? rep.grade : 'UNKNOWN';
    g.textContent = rep && rep.ftiAvg !== null ? `${grade} · FTI ${fmt(rep.ftiAvg, 3)}` : grade;
    g.dataset.grade = grade;
    $('fti-hint').textContent = rep
      ? `FTI = (cost/cost₀) / ((qps/qps₀)·(lat₀/lat)) against the medians of ${rep.samples} retained samples; OK ≤ ${th.ok} < WARN ≤ ${th.warn} < FAIL; fewer than ${state.history.meta.minFinopsSamples} samples grade UNKNOWN.`
      : 'No FinOps samples: the sidecar has no finops settings, so this workload is not graded.';
  }

  function drawPcs() {
    const pts = state.history.points;
    const xs = pts.map((p) => p.atMs / 1000);
    draw('pcs', state.selected, {
      scales: { x: xTime },
      legend: { show: false },
      series: [
        {},
        { label: 'accepted', stroke: '#22c55e', width: 2 },
        { label: 'escalated', stroke: '#f59e0b', width: 2 },
        { label: 'rejected', stroke: '#ef4444', width: 2 },
      ],
      axes: [axisColor, axisColor],
    }, [xs, pts.map((p) => p.pcs.accepted), pts.map((p) => p.pcs.escalated), pts.map((p) => p.pcs.rejected)]);
    const c = state.summary.pcs;
    $('pcs-accepted').textContent = c.accepted;
    $('pcs-escalated').textContent = c.escalated;
    $('pcs-rejected').textContent = c.rejected;
  }

  function renderIncidents() {
    const ol = $('incidents');
    ol.textContent = '';
    const list = (state.summary.incidents || []).slice().reverse();
    if (!list.length) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = 'No incident.';
      ol.append(li);
      return;
    }
    for (const i of list) {
      const li = document.createElement('li');
      li.dataset.pattern = i.pattern;
      const head = document.createElement('div');
      head.className = 'incident-head';
      const pat = document.createElement('strong');
      pat.textContent = i.pattern;
      const risk = document.createElement('span');
      risk.className = 'badge' + (i.alert ? ' alert' : '');
      risk.textContent = `risk ${fmt(i.risk, 2)}`;
      const when = document.createElement('span');
      when.className = 'muted small';
      when.textContent = `${i.start} → ${i.end} · ${i.findings} findings · ${i.hosts.join(', ')}`;
      head.append(pat, risk, when);
      const story = document.createElement('p');
      story.className = 'narrative';
      story.textContent = i.narrative;
      li.append(head, story);
      if (i.veto) {
        const v = document.createElement('p');
        v.className = 'veto-line';
        v.textContent = `veto: ${i.veto} — ${i.vetoReason || ''}`;
        li.append(v);
      }
      ol.append(li);
    }
  }

  function renderTable(rows, signal, window) {
    const tb = document.querySelector('#recent tbody');
    tb.textContent = '';
    $('table-caption').textContent = signal ? `${signal} over ${window}, newest first` : '';
    for (const [p, w] of rows.slice(-TABLE_ROWS).reverse()) {
      const tr = document.createElement('tr');
      const cells = [
        new Date(p.atMs).toLocaleTimeString(), p.pod, p.epoch, w.signal, w.window, w.n,
        fmt(w.mean, 3), fmt(w.stdev, 3), fmt(w.volatilityIndex, 4), riskText(w.driftRisk),
      ];
      for (const c of cells) {
        const td = document.createElement('td');
        td.textContent = String(c);
        tr.append(td);
      }
      tr.lastChild.dataset.risk = w.driftRisk;
      tb.append(tr);
    }
  }

  function renderDetail() {
    const s = state.summary;
    $('empty').hidden = true;
    $('detail').hidden = false;
    $('wl-name').textContent = state.selected;
    const risk = $('risk');
    risk.textContent = `drift risk: ${riskText(s.driftRisk)}`;
    risk.dataset.risk = s.driftRisk;
    const veto = $('veto');
    if (s.veto) {
      veto.hidden = false;
      veto.textContent = `veto: ${s.veto.action}`;
      veto.title = s.veto.reason || '';
    } else {
      veto.hidden = true;
    }
    $('wl-meta').textContent = `updated ${s.updatedAt} · ${s.pods.length} pod${s.pods.length === 1 ? '' : 's'} · ${s.meta.inputs.reports} reports · engine ${s.meta.engineVersion} · history ${state.history.meta.inputs.retained}/${state.history.meta.inputs.capacity} points`;
    renderSelect(seriesKeys(state.history));
    drawMean();
    drawRisk();
    drawFti();
    drawPcs();
    renderIncidents();
  }

  let timer = null;
  let inflight = false;

  async function refresh() {
    if (inflight) return;
    inflight = true;
    clearTimeout(timer);
    try {
      const list = await getJSON('/v1/workloads');
      state.list = list.workloads || [];
      $('engine').textContent = `engine ${list.engineVersion}`;
      const wanted = fromHash();
      if (wanted && state.list.some((w) => wlKey(w) === wanted)) state.selected = wanted;
      if (!state.selected || !state.list.some((w) => wlKey(w) === state.selected)) {
        state.selected = defaultSelection(state.list);
      }
      renderList();
      if (state.selected) {
        const [ns, wl] = state.selected.split('/');
        const [summary, history] = await Promise.all([
          getJSON(`/v1/workloads/${esc(ns)}/${esc(wl)}`),
          getJSON(`/v1/workloads/${esc(ns)}/${esc(wl)}/history`),
        ]);
        state.summary = summary;
        state.history = history;
        renderDetail();
      }
      state.updates += 1;
      state.lastError = null;
      setStatus('live', `live · updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      state.lastError = String(e && e.message ? e.message : e);
      setStatus('error', `cannot read the verifier: ${state.lastError}`);
    } finally {
      inflight = false;
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  // The export is the workload's JSON exactly as the API returns it (the same bytes).
  async function exportJSON() {
    if (!state.selected) return;
    const [ns, wl] = state.selected.split('/');
    const r = await fetch(`/v1/workloads/${esc(ns)}/${esc(wl)}`, { cache: 'no-store' });
    const text = await r.text();
    const blob = new Blob([text], { type: 'application/json' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `coherence-${ns}-${wl}.json`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  $('export').addEventListener('click', () => { exportJSON().catch((e) => setStatus('error', `export failed: ${e.message}`)); });
  $('signal-select').addEventListener('change', (e) => {
    state.seriesKey = e.target.value;
    if (state.history) drawMean();
  });
  window.addEventListener('hashchange', () => {
    const h = fromHash();
    if (h && h !== state.selected) {
      state.selected = h;
      state.seriesKey = null;
      refresh();
    }
  });
  window.addEventListener('resize', () => {
    for (const [name, u] of Object.entries(state.charts)) {
      const el = $(`chart-${name}`);
      u.setSize({ width: chartWidth(el), height: u.height });
    }
  });
  refresh();
}());
