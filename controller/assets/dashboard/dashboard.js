// canary dashboard: draws /api/state, kept live by server-sent events
// (/api/events), with hand-written SVG charts. No library, no network but
// this controller. Every field is read defensively: the JSON may gain fields.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  // segment: the segment the charts show ('' = all traffic); segmentsKey: its choices drawn.
  const app = { snap: null, receivedAt: 0, busy: false, timelineKey: null, reportsKey: null, segment: '', segmentsKey: null };
  // For tests and the curious: when each decision was first drawn (ms since the epoch).
  const shown = {};
  window.canaryDashboard = { shown: shown, snapshots: 0, transport: '' };

  // ---- formatting ----------------------------------------------------------
  const isNum = (v) => typeof v === 'number' && isFinite(v);
  function pct(bp) {
    if (!isNum(bp)) return '–';
    const p = bp / 100;
    return (Number.isInteger(p) ? String(p) : p.toFixed(2)) + '%';
  }
  function dur(ms) {
    if (!isNum(ms)) return '–';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + String(s % 60).padStart(2, '0') + ' s';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + String(m % 60).padStart(2, '0') + ' min';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }
  function clock(ms) {
    if (!isNum(ms)) return '';
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function sig(v, digits) {
    if (!isNum(v)) return '–';
    if (v === 0) return '0';
    const a = Math.abs(v);
    if (a >= 1000) return v.toFixed(0);
    return Number(v.toPrecision(digits || 3)).toString();
  }
  const fmtPct = (v) => (isNum(v) ? sig(v * 100, 3) + '%' : '–');
  const fmtMs = (v) => (isNum(v) ? sig(v, 3) + ' ms' : '–');
  // A gate's values as its descriptor says (`format`, which the controller
  // sends with every result: scale from the gate's units, digits, unit), so
  // a new gate needs nothing here.
  function gateFormat(d) {
    if (!d || !isNum(d.scale)) return (v) => sig(v, 4);
    const digits = d.digits || {};
    return (v) => {
      if (!isNum(v)) return '–';
      const x = v * d.scale;
      return (isNum(digits.decimals) ? x.toFixed(digits.decimals) : sig(x, digits.significant)) + (d.unit || '');
    };
  }
  const gateName = (r) => (r.format && r.format.title) || String(r.gate || '?').replace(/_/g, ' ');
  function setText(el, t) { if (el && el.textContent !== t) el.textContent = t; }
  function h(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === 'class') e.className = attrs[k]; else if (k === 'text') e.textContent = attrs[k]; else e.setAttribute(k, attrs[k]);
    }
    for (const c of children || []) if (c != null) e.append(c);
    return e;
  }
  function s(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }

  // ---- header, stages, cards --------------------------------------------
  function renderHeader(d) {
    setText($('rollout'), d.rollout || '–');
    setText($('champion'), d.champion || '–');
    setText($('challenger'), d.challenger || '–');
    const phase = String(d.phase || 'unknown');
    const badge = $('phase');
    setText(badge, phase.replace(/_/g, ' '));
    badge.className = 'badge ' + phase;
    document.title = (d.rollout || 'canary') + ' · ' + pct(d.weight_bp) + ' · ' + phase.replace(/_/g, ' ');
  }

  function renderStages(d) {
    const ol = $('stages');
    const stages = Array.isArray(d.stages) ? d.stages : [];
    const phase = d.phase;
    ol.replaceChildren(...stages.map((st, i) => {
      let cls = '';
      if (phase === 'promoted' || i < d.stage) cls = 'done';
      if (i === d.stage && phase !== 'promoted') cls = phase === 'rolled_back' ? 'stopped' : 'current';
      const info = [];
      if (st.shadow) info.push('shadow');
      if (isNum(st.min_duration_ms) && st.min_duration_ms > 0) info.push('≥ ' + dur(st.min_duration_ms));
      if (isNum(st.min_requests) && st.min_requests > 0) info.push('≥ ' + st.min_requests + ' resp.');
      return h('li', { class: cls, title: st.name || '' }, [h('b', { text: pct(st.weight_bp) }), (st.name || '') + (info.length ? ' · ' + info.join(', ') : '')]);
    }));
  }

  function renderCards(d) {
    setText($('weight'), pct(d.weight_bp));
    const stages = Array.isArray(d.stages) ? d.stages.length : 0;
    setText($('stage-name'), 'stage ' + ((d.stage | 0) + 1) + ' of ' + stages + ' · ' + (d.stage_name || '') +
      (d.shadow_stage ? ' (shadow)' : '') + ' · epoch ' + (d.epoch ?? '–'));
    const rl = Array.isArray(d.requests_left) ? d.requests_left : null;
    if (rl) {
      const total = (rl[0] | 0) + (rl[1] | 0);
      setText($('requests-left'), total === 0 ? 'met' : String(total));
      setText($('requests-left-sub'), (d.champion || 'champion') + ' ' + rl[0] + ' · ' + (d.challenger || 'challenger') + ' ' + rl[1] +
        (d.shadow_stage ? ' shadow calls' : ''));
    } else {
      setText($('requests-left'), '–');
      setText($('requests-left-sub'), d.phase === 'promoted' || d.phase === 'rolled_back' ? 'the rollout has ended' : 'no evaluation in this stage yet');
    }
    renderClock();
    const ld = d.last_decision;
    const box = $('last-decision');
    if (!ld) { box.replaceChildren('no decision yet'); return; }
    const move = ld.action === 'hold' ? 'at ' + ld.from_stage + ' (' + pct(ld.from_weight_bp) + ')'
      : ld.from_stage + ' (' + pct(ld.from_weight_bp) + ') → ' + ld.to_stage + ' (' + pct(ld.to_weight_bp) + ')';
    const reasons = Array.isArray(ld.reasons) ? ld.reasons.join('; ') : '';
    box.replaceChildren(
      h('div', {}, [h('b', { text: '#' + ld.seq + ' ' }), h('span', { class: 'badge ' + ld.action, text: String(ld.action || '') }),
        ' ' + move + ' · ' + clock(ld.at) + (ld.manual ? ' · operator' : '')]),
      h('div', { class: 'reasons', title: reasons, text: reasons }));
  }

  // Time left and time in stage move between snapshots: counted here.
  function renderClock() {
    const d = app.snap;
    if (!d) return;
    const ended = d.phase === 'promoted' || d.phase === 'rolled_back';
    const since = Date.now() - app.receivedAt;
    if (isNum(d.time_left_ms) && !ended) {
      const left = Math.max(0, d.time_left_ms - since);
      setText($('time-left'), left === 0 ? 'met' : dur(left));
    } else {
      setText($('time-left'), '–');
    }
    // Expected time at the current traffic, counting down between snapshots.
    const eta = (ms) => dur(Math.max(0, ms - since));
    setText($('eta'), isNum(d.eta_ms) && !ended
      ? '≈ ' + eta(d.eta_stage_ms) + ' until the stage can end, ≈ ' + eta(d.eta_ms) + ' until promotion at the current traffic'
      : '');
    const stage = (d.stages || [])[d.stage] || {};
    setText($('in-stage'), isNum(d.in_stage_ms) && !ended
      ? 'in stage ' + dur(d.in_stage_ms + since) + (isNum(stage.min_duration_ms) ? ' of at least ' + dur(stage.min_duration_ms) : '')
      : (ended ? 'the rollout has ended' : 'waiting for every Envoy to apply the stage'));
  }

  // ---- gates ------------------------------------------------------------
  // An interval as the gates report it: {low, high} (or [low, high]).
  function span(v, f) {
    let lo, hi;
    if (Array.isArray(v) && v.length === 2) { lo = v[0]; hi = v[1]; }
    else if (v && typeof v === 'object') { lo = v.low ?? v.lower ?? v.lo; hi = v.high ?? v.upper ?? v.hi; }
    return isNum(lo) && isNum(hi) ? '[' + f(lo) + ', ' + f(hi) + ']' : null;
  }
  const signed = (v, f) => (isNum(v) ? (v >= 0 ? '+' : '') + f(v) : '–');
  function renderGates(d) {
    const tbody = $('gates').tBodies[0];
    const g = d.gates;
    const results = g && Array.isArray(g.results) ? g.results : [];
    const note = !g ? 'no gate judged yet'
      : 'decision #' + g.seq + ' at ' + clock(g.at) + ', stage ' + g.stage_name + (g.epoch !== d.epoch ? ' (an earlier stage)' : '');
    setText($('gates-note'), note);
    if (!results.length) {
      tbody.replaceChildren(h('tr', {}, [h('td', { colspan: '9', class: 'detail', text: 'no gate results yet' })]));
      return;
    }
    tbody.replaceChildren(...results.map((r) => {
      const f = gateFormat(r.format);
      const outcome = String(r.outcome || 'unknown');
      const small = (text) => (text ? h('span', { class: 'ci', text: text }) : null);
      const ci = (v) => { const t = span(v, f); return t ? 'CI ' + t : null; };
      const diff = isNum(r.difference) ? 'Δ ' + signed(r.difference, f) + (span(r.difference_interval, f) ? ' ' + span(r.difference_interval, f) : '') : null;
      const look = [
        r.blocks ? 'blocks' : null,
        isNum(r.look) ? 'look ' + r.look + (isNum(r.confidence) ? ' · ' + sig(r.confidence * 100, 4) + ' %' : '') : null,
        r.carried ? 'carried' : null,
        isNum(r.needed) ? '≈ ' + r.needed + ' more each' : null,
      ].filter(Boolean).join(' · ');
      // PSI compares the challenger with the champion: one value, against its limit.
      const psi = !!(r.format && r.format.reference);
      // A per-segment result names its segment (the totals' row has none).
      const attrs = r.segment ? { 'data-gate': String(r.gate), 'data-segment': String(r.segment) } : { 'data-gate': String(r.gate) };
      return h('tr', attrs, [
        h('td', { text: gateName(r) + (r.segment ? ' · segment ' + r.segment : '') }),
        psi ? h('td', { class: 'num muted', text: 'reference' }) : h('td', { class: 'num' }, [f(r.champion), small(ci(r.champion_interval))]),
        h('td', { class: 'num' }, [(psi ? 'PSI ' : '') + f(r.challenger), small(ci(r.challenger_interval)), small(diff)]),
        h('td', { class: 'num', text: (psi ? '< ' : '') + f(r.threshold) }),
        h('td', {}, [forest(r.forest, outcome)]),
        h('td', { class: 'num', text: signed(r.margin, f) }),
        h('td', { class: 'num', text: (r.champion_n ?? '–') + ' / ' + (r.challenger_n ?? '–') }),
        h('td', {}, [h('span', { class: 'badge ' + outcome, text: outcome.replace(/_/g, ' ') }), look ? h('div', { class: 'muted', text: look }) : null]),
        h('td', { class: 'detail', text: String(r.detail || '') }),
      ]);
    }));
  }

  // A gate's interval against its threshold ("forest plot"), from the
  // numbers the controller computed for it (the same as in the reports):
  // {point, low, high, limit, difference, unit}.
  function forest(f, outcome) {
    if (!f || !isNum(f.point)) return '–';
    const W = 200, H = 30;
    const xs = [f.point, f.low, f.high, f.limit, f.difference ? 0 : null].filter(isNum);
    let lo = Math.min(...xs), hi = Math.max(...xs);
    const pad = Math.max((hi - lo) * 0.1, 1e-9);
    lo -= pad; hi += pad;
    const x = (v) => 6 + ((v - lo) / (hi - lo)) * (W - 12);
    const unit = f.unit === '%' || !f.unit ? f.unit || '' : ' ' + f.unit;
    const label = (v) => (f.difference && v > 0 ? '+' : '') + sig(v, 3) + unit;
    const colour = { pass: '#15803d', fail: '#b91c1c', inconclusive: '#a16207' }[outcome] || '#6b7280';
    const svg = s('svg', { class: 'forest', viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img' });
    svg.append(s('line', { x1: 6, y1: 12, x2: W - 6, y2: 12, stroke: '#ddd' }));
    if (f.difference) svg.append(s('line', { x1: x(0), y1: 4, x2: x(0), y2: 20, stroke: '#999' }));
    if (isNum(f.limit)) {
      svg.append(s('line', { x1: x(f.limit), y1: 2, x2: x(f.limit), y2: 22, stroke: '#b91c1c', 'stroke-dasharray': '3,2' }));
      const at = x(f.limit);
      const anchor = at > W * 0.7 ? 'end' : at < W * 0.3 ? 'start' : 'middle';
      const t = s('text', { x: at, y: 29, 'font-size': 9, 'text-anchor': anchor, fill: '#b91c1c' });
      t.textContent = 'limit ' + label(f.limit);
      svg.append(t);
    }
    if (isNum(f.low) && isNum(f.high)) {
      svg.append(s('line', { x1: x(f.low), y1: 12, x2: x(f.high), y2: 12, stroke: colour, 'stroke-width': 4, 'stroke-linecap': 'round' }));
    }
    const dot = s('circle', { cx: x(f.point), cy: 12, r: 4, fill: colour, stroke: '#fff' });
    const title = s('title', {});
    title.textContent = label(f.point) + (isNum(f.low) && isNum(f.high) ? ' [' + label(f.low) + ', ' + label(f.high) + ']' : '') +
      (isNum(f.limit) ? ' against the limit ' + label(f.limit) : '');
    dot.append(title);
    svg.append(dot);
    return svg;
  }

  // ---- charts -------------------------------------------------------------
  function niceStep(range, ticks) {
    const raw = range / Math.max(1, ticks);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / p;
    return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * p;
  }
  function relTime(ms) {
    const s = Math.round(ms / 1000);
    if (Math.abs(s) < 3600) return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
    return Math.floor(s / 3600) + 'h' + String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  }

  // lines: [{cls, values}], t: times (ms); opts: {fmt, zero, limit, stages}
  function drawChart(box, t, lines, opts) {
    const W = Math.max(280, Math.round(box.clientWidth || 400));
    const H = 150;
    const m = { l: 50, r: 12, t: 12, b: 20 };
    let lo = Infinity, hi = -Infinity;
    for (const l of lines) for (const v of l.values) if (isNum(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (isNum(opts.limit)) { lo = Math.min(lo, opts.limit); hi = Math.max(hi, opts.limit); }
    if (opts.zero) lo = Math.min(0, lo);
    const span = opts.minSpan || 1;
    if (hi - lo < span) { const mid = (hi + lo) / 2; lo = opts.zero ? lo : mid - span / 2; hi = lo + span; }
    const step = niceStep(hi - lo, 4);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const t0 = t[0], t1 = t[t.length - 1] > t0 ? t[t.length - 1] : t0 + 1000;
    const x = (ms) => m.l + ((ms - t0) / (t1 - t0)) * (W - m.l - m.r);
    const y = (v) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
    const svg = s('svg', { viewBox: '0 0 ' + W + ' ' + H, preserveAspectRatio: 'none', role: 'img' });
    for (let v = lo; v <= hi + step / 2; v += step) {
      svg.append(s('line', { class: 'grid', x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      const label = s('text', { class: 'axis', x: m.l - 5, y: y(v) + 3, 'text-anchor': 'end' });
      label.textContent = opts.fmt(v);
      svg.append(label);
    }
    const xStep = niceStep((t1 - t0) / 1000, 4) * 1000;
    for (let ms = 0; t0 + ms <= t1; ms += xStep) {
      const label = s('text', { class: 'axis', x: x(t0 + ms), y: H - 5, 'text-anchor': 'middle' });
      label.textContent = relTime(ms);
      svg.append(label);
    }
    for (const st of opts.stages || []) {
      const sx = x(st.at);
      svg.append(s('line', { class: 'stage', x1: sx, x2: sx, y1: m.t, y2: H - m.b }));
      const right = sx > W - m.r - 34;
      const label = s('text', { class: 'stage-label', x: right ? sx - 3 : sx + 3, y: m.t + 8, 'text-anchor': right ? 'end' : 'start' });
      label.textContent = st.label;
      svg.append(label);
    }
    if (isNum(opts.limit)) svg.append(s('line', { class: 'limit', x1: m.l, x2: W - m.r, y1: y(opts.limit), y2: y(opts.limit) }));
    for (const l of lines) {
      let d = '', pen = false, last = null;
      l.values.forEach((v, i) => {
        // A gap, unless a missing value only means "not measured since".
        if (!isNum(v)) { pen = pen && !!opts.connect; return; }
        d += (pen ? 'L' : 'M') + x(t[i]).toFixed(1) + ' ' + y(v).toFixed(1);
        pen = true;
        last = i;
      });
      if (d) svg.append(s('path', { class: l.cls, d: d }));
      if (last !== null) svg.append(s('circle', { class: 'dot-' + l.cls, cx: x(t[last]), cy: y(l.values[last]), r: 2.5 }));
    }
    box.replaceChildren(svg);
  }

  const last = (a) => { if (!Array.isArray(a)) return null; for (let i = a.length - 1; i >= 0; i--) if (isNum(a[i])) return a[i]; return null; };
  const arr = (a, n) => (Array.isArray(a) ? a : new Array(n).fill(null));
  function gateLimit(d, kind) {
    const r = d.gates && Array.isArray(d.gates.results) ? d.gates.results.find((g) => g.gate === kind && !g.segment) : null;
    return r && isNum(r.threshold) ? r.threshold : null;
  }
  const CHARTS = [
    { id: 'rps', title: 'Request rate', key: 'rps', fmt: (v) => sig(v, 3) + '/s', zero: true, always: true, minSpan: 1 },
    { id: 'errors', title: 'Error rate (5xx)', key: 'error_rate', fmt: fmtPct, zero: true, always: true, minSpan: 0.01 },
    // Envoy refreshes histograms at its stats flush: latency points come
    // at that pace, and the line joins them.
    { id: 'p50', title: 'Latency p50', key: 'p50_ms', fmt: fmtMs, zero: true, always: true, minSpan: 1, connect: true },
    { id: 'p99', title: 'Latency p99', key: 'p99_ms', fmt: fmtMs, zero: true, always: true, minSpan: 1, connect: true },
    { id: 'psi', title: 'PSI of the predictions', single: 'psi', fmt: (v) => sig(v, 3), zero: true, minSpan: 0.05, limit: (d) => gateLimit(d, 'prediction') },
    { id: 'labels', title: 'Label metric (mean outcome)', key: 'label', fmt: (v) => sig(v, 3), minSpan: 0.05, connect: true },
    { id: 'agreement', title: 'Shadow agreement', single: 'agreement', fmt: fmtPct, minSpan: 0.05, limit: (d) => gateLimit(d, 'shadow_agreement') },
  ];

  // The segments the gates judge have their own series: a choice of "All
  // traffic" or one of them switches the per-version charts to it.
  function renderSegmentPick(d) {
    const sr = d.series || {};
    const segments = sr.segments && typeof sr.segments === 'object' ? sr.segments : {};
    const names = Object.keys(segments);
    if (app.segment && !names.includes(app.segment)) app.segment = '';
    $('segment-pick').hidden = names.length === 0;
    const select = $('segment');
    const key = names.join('|');
    if (key !== app.segmentsKey) {
      app.segmentsKey = key;
      select.replaceChildren(h('option', { value: '', text: 'All traffic' }),
        ...names.map((n) => h('option', { value: n, text: 'segment ' + n })));
    }
    if (select.value !== app.segment) select.value = app.segment;
    setText($('segment-note'), app.segment ? 'requests, errors, latency and labels of this segment (its header value); PSI and agreement are all traffic\'s' : '');
    return app.segment ? segments[app.segment] : null;
  }

  function renderCharts(d) {
    const sr = d.series || {};
    const seg = renderSegmentPick(d);
    const versions = seg || sr;
    const t = Array.isArray(sr.t) ? sr.t : [];
    const n = t.length;
    const container = $('charts');
    const epochs = arr(sr.epoch, n), weights = arr(sr.weight_bp, n);
    const stages = [];
    for (let i = 1; i < n; i++) {
      if (epochs[i] !== epochs[i - 1]) stages.push({ at: t[i - 1] + (t[i] - t[i - 1]) / 2, label: pct(weights[i]) });
    }
    for (const c of CHARTS) {
      let lines;
      if (c.single) lines = [{ cls: 'single', values: arr(sr[c.single], n), name: d.challenger }];
      else lines = [
        { cls: 'champion', values: arr((versions.champion || {})[c.key], n), name: d.champion },
        { cls: 'challenger', values: arr((versions.challenger || {})[c.key], n), name: d.challenger },
      ];
      const has = lines.some((l) => l.values.some(isNum));
      let wrap = document.getElementById('chart-' + c.id);
      if (!has && !c.always) { if (wrap) wrap.remove(); continue; }
      if (!wrap) {
        wrap = h('div', { class: 'chart', id: 'chart-' + c.id }, [h('h3', {}, [h('span', { text: c.title }), h('span', { class: 'now' })]), h('div', { class: 'plot' })]);
        const order = CHARTS.map((x) => x.id);
        const after = Array.from(container.children).find((e) => order.indexOf(e.id.slice(6)) > order.indexOf(c.id));
        container.insertBefore(wrap, after || null);
      }
      setText(wrap.querySelector('h3 span'), c.title + (seg && !c.single ? ' · segment ' + app.segment : ''));
      wrap.dataset.segment = seg && !c.single ? app.segment : '';
      const now = lines.map((l) => (l.name || '') + ' ' + c.fmt(last(l.values))).join(' · ');
      setText(wrap.querySelector('.now'), has ? now : '');
      const plot = wrap.querySelector('.plot');
      if (!has || n < 1) { plot.replaceChildren(h('div', { class: 'empty', text: 'no data yet' })); continue; }
      drawChart(plot, t, lines, { fmt: c.fmt, zero: c.zero, minSpan: c.minSpan, connect: c.connect, limit: c.limit ? c.limit(d) : null, stages: stages });
    }
  }

  // ---- timeline, reports ----------------------------------------------------
  function renderTimeline(d) {
    const items = Array.isArray(d.timeline) ? d.timeline : [];
    const key = items.length + ':' + (items[0] ? items[0].seq : '');
    if (key === app.timelineKey) return;
    app.timelineKey = key;
    const ol = $('timeline');
    if (!items.length) { ol.replaceChildren(h('li', { class: 'why', text: 'no stage change or command yet' })); return; }
    ol.replaceChildren(...items.map((e) => {
      const move = ['pause', 'resume'].includes(e.action) ? 'at ' + e.from_stage + ' (' + pct(e.from_weight_bp) + ')'
        : e.from_stage + ' (' + pct(e.from_weight_bp) + ') → ' + e.to_stage + ' (' + pct(e.to_weight_bp) + ')';
      const why = Array.isArray(e.reasons) ? e.reasons.join('; ') : '';
      return h('li', { 'data-seq': String(e.seq) }, [
        h('time', { text: clock(e.at) }), h('span', { class: 'badge ' + e.action, text: String(e.action || '') }),
        ' #' + e.seq + ' ' + move, e.manual ? h('span', { class: 'manual', text: 'operator' }) : null,
        h('div', { class: 'why', text: why })]);
    }));
  }
  function renderReports(d) {
    const list = Array.isArray(d.reports) ? d.reports : [];
    const key = list.map((r) => r.name + r.modified).join('|');
    if (key === app.reportsKey) return;
    app.reportsKey = key;
    const ul = $('reports');
    const html = list.filter((r) => /\.html$/.test(r.name || ''));
    if (!html.length) { ul.replaceChildren(h('li', { class: 'muted', text: 'none yet: a report is written when a stage ends' })); return; }
    ul.replaceChildren(...html.map((r) => {
      const json = list.find((x) => x.name === r.name.replace(/\.html$/, '.json'));
      return h('li', {}, [h('a', { href: r.url, target: '_blank', rel: 'noopener', text: r.name.replace(/\.html$/, '') }),
        json ? h('span', {}, [' (', h('a', { href: json.url, target: '_blank', rel: 'noopener', text: 'json' }), ')']) : null]);
    }));
  }

  // ---- controls ---------------------------------------------------------------
  const ALLOWED = {
    pause: ['running'], resume: ['paused'], advance: ['running', 'paused'], rollback: ['running', 'paused', 'promoted'],
  };
  function renderControls(d) {
    const c = d.controls || {};
    const enabled = !!c.enabled;
    setText($('controls-note'), String(c.message || ''));
    $('token').disabled = !enabled;
    $('reason').disabled = !enabled;
    for (const cmd of Object.keys(ALLOWED)) {
      $('btn-' + cmd).disabled = !enabled || app.busy || !ALLOWED[cmd].includes(d.phase);
    }
  }
  function message(text, ok) {
    const p = $('control-msg');
    p.textContent = text;
    p.className = 'msg ' + (ok ? 'ok' : 'err');
  }
  async function command(cmd) {
    const d = app.snap || {};
    const token = $('token').value.trim();
    if (!token) { message('enter the operator token first', false); $('token').focus(); return; }
    if (cmd === 'rollback' && !window.confirm('Roll back ' + (d.rollout || 'the rollout') + ' now? Every user goes back to ' + (d.champion || 'the champion') + ' (0 %) and the rollout ends.')) return;
    if (cmd === 'advance') {
      const next = (d.stages || [])[(d.stage | 0) + 1];
      if (!window.confirm('Advance ' + (d.rollout || 'the rollout') + ' to ' + (next ? next.name + ' (' + pct(next.weight_bp) + ')' : 'the next stage') + ' now, without waiting for the gates?')) return;
    }
    app.busy = true;
    renderControls(d);
    message(cmd + '…', true);
    try {
      const r = await fetch('/api/' + cmd, {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ reason: $('reason').value }),
        cache: 'no-store',
      });
      let body = {};
      try { body = await r.json(); } catch (e) { /* not JSON */ }
      if (r.ok) {
        message('#' + body.seq + ' ' + body.action + ': ' + body.from_stage + ' → ' + body.to_stage + ' (' + pct(body.to_weight_bp) + ')', true);
        $('reason').value = '';
      } else if (r.status === 401) {
        message('the token was refused (401): nothing changed', false);
      } else {
        message((body.error || r.statusText) + ' (' + r.status + ')', false);
      }
    } catch (e) {
      message('could not reach the controller: ' + e, false);
    } finally {
      app.busy = false;
      if (app.snap) renderControls(app.snap);
    }
  }

  // ---- snapshots ---------------------------------------------------------------
  function render(d) {
    app.snap = d;
    app.receivedAt = Date.now();
    window.canaryDashboard.snapshots++;
    renderHeader(d);
    renderStages(d);
    renderCards(d);
    renderGates(d);
    renderCharts(d);
    renderTimeline(d);
    renderReports(d);
    renderControls(d);
    setText($('updated'), 'updated ' + clock(app.receivedAt) + (d.error ? ' · ' + d.error : ''));
    const ld = d.last_decision;
    if (ld && isNum(ld.seq) && !(ld.seq in shown)) shown[ld.seq] = Date.now();
  }
  function accept(text) {
    let d;
    try { d = JSON.parse(text); } catch (e) { return; }
    if (d && typeof d === 'object') render(d);
  }
  function conn(text, cls) {
    const c = $('conn');
    setText(c, text);
    c.className = 'conn ' + cls;
  }

  // Server-sent events: pushed on every change, reconnects by itself.
  function live() {
    if (!window.EventSource) return poll();
    window.canaryDashboard.transport = 'sse';
    const es = new EventSource('/api/events');
    es.addEventListener('state', (e) => { conn('live', 'live'); accept(e.data); });
    es.onopen = () => conn('live', 'live');
    es.onerror = () => conn(es.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting… (last state shown)', 'down');
  }
  // Without EventSource: ask every 2 s.
  async function poll() {
    window.canaryDashboard.transport = 'poll';
    for (;;) {
      try {
        const r = await fetch('/api/state', { cache: 'no-store' });
        accept(await r.text());
        conn('live (polling)', 'live');
      } catch (e) {
        conn('unreachable (last state shown)', 'down');
      }
      await new Promise((res) => setTimeout(res, 2000));
    }
  }

  function start() {
    for (const cmd of Object.keys(ALLOWED)) $('btn-' + cmd).addEventListener('click', () => command(cmd));
    $('segment').addEventListener('change', () => { app.segment = $('segment').value; if (app.snap) renderCharts(app.snap); });
    const token = $('token');
    try { token.value = sessionStorage.getItem('canary-token') || ''; } catch (e) { /* storage off */ }
    token.addEventListener('change', () => { try { sessionStorage.setItem('canary-token', token.value); } catch (e) { /* storage off */ } });
    setInterval(renderClock, 1000);
    let resize = 0;
    window.addEventListener('resize', () => { clearTimeout(resize); resize = setTimeout(() => app.snap && renderCharts(app.snap), 150); });
    live();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
