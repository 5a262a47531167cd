// The live page (src/monitor/server.h): state from api/state, metrics lines from api/metrics, files from
// api/files, updates from the `events` stream (server-sent events). Every URL is relative, so the page works
// under a proxy's path prefix; nothing is loaded from elsewhere. The charts are SVG drawn here.
'use strict';

const run = { lines: [], generation: null, filesText: '', detailsVersion: -1, state: null, busy: false, again: false };
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';

async function getJSON(url) {
  const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
  if (!response.ok) throw new Error(url + ': ' + response.status);
  return response.json();
}

function number(v, digits = 4) {
  if (v === null || v === undefined || !isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  const text = v.toPrecision(digits);
  return text.includes('.') ? text.replace(/\.?0+$/, '') : text;
}
function bytes(v) {
  if (!isFinite(v)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + ' ' + units[i];
}
function duration(s) {
  if (!isFinite(s) || s < 0) return '–';
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + (s % 60) + 's';
}

// An SVG line chart: `series` = [{points: [[x, y]...], cls}], drawn into `svg` with its y range and last x.
function chart(svg, series, count) {
  const w = 600, h = 200, left = 52, bottom = 18, top = 8, right = 8;
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.dataset.points = String(count);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const all = series.flatMap((s) => s.points);
  if (!all.length) return;
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = (x) => left + ((x - x0) / (x1 - x0)) * (w - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom);
  const add = (name, attrs, text) => {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  add('line', { x1: left, y1: h - bottom, x2: w - right, y2: h - bottom, class: 'axis' });
  add('line', { x1: left, y1: top, x2: left, y2: h - bottom, class: 'axis' });
  add('text', { x: 2, y: top + 8 }, number(y1, 3));
  add('text', { x: 2, y: h - bottom }, number(y0, 3));
  add('text', { x: left, y: h - 4 }, 'step ' + x0);
  add('text', { x: w - right - 60, y: h - 4 }, 'step ' + x1);
  for (const s of series) {
    if (s.points.length === 1) {
      add('circle', { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3, class: 'dot' });
      continue;
    }
    add('polyline', { points: s.points.map((p) => sx(p[0]).toFixed(1) + ',' + sy(p[1]).toFixed(1)).join(' '), class: s.cls });
  }
}

function seriesOf(key) {
  const points = [];
  for (const line of run.lines) {
    if (line && typeof line[key] === 'number' && isFinite(line[key])) points.push([line.step, line[key]]);
  }
  return points;
}

function smoothed(points, beta = 0.9) {
  // TensorBoard's smoothing: an exponential moving average, debiased at the start.
  let average = 0;
  return points.map((p, i) => {
    average = beta * average + (1 - beta) * p[1];
    return [p[0], average / (1 - Math.pow(beta, i + 1))];
  });
}

function drawCharts() {
  const loss = seriesOf('loss');
  chart($('loss-chart'), [{ points: loss, cls: 'raw' }, { points: smoothed(loss), cls: 'smooth' }], loss.length);
  const lr = seriesOf('lr');
  chart($('lr-chart'), [{ points: lr, cls: 'single' }], lr.length);
  for (const [key, figure, svg, scale] of [['d', 'd-figure', 'd-chart', 1], ['validation_loss', 'val-figure', 'val-chart', 1],
    ['peak_memory_bytes', 'mem-figure', 'mem-chart', 1 / 2 ** 30]]) {
    const points = seriesOf(key).map((p) => [p[0], p[1] * scale]);
    $(figure).hidden = points.length === 0;
    if (points.length) chart($(svg), [{ points, cls: 'single' }], points.length);
  }
}

function showProgress(st) {
  const p = st.progress || {};
  const last = st.last_metrics || {};
  const total = p.total_steps || 0;
  const step = p.step !== undefined ? p.step : last.step;
  $('p-step').textContent = step === undefined ? '–' : total ? `${step} / ${total}` : String(step);
  const perEpoch = p.steps_per_epoch || 0;
  $('p-epoch').textContent = perEpoch && step !== undefined ? String(Math.floor(step / perEpoch) + 1) : '–';
  // Speed from the last 20 steps' own times (the metrics), so pauses for saving and sampling do not count.
  const recent = run.lines.slice(-20).map((l) => l && l.step_seconds).filter((v) => typeof v === 'number' && v > 0);
  const mean = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN;
  const its = 1 / mean;
  $('p-its').textContent = number(its, 3);
  const perStep = (st.run && st.run.images_per_step) || 0;
  $('p-ips').textContent = perStep ? number(its * perStep, 3) : '–';
  $('p-eta').textContent = total && step !== undefined && p.state === 'training' ? duration((total - step) * mean) : '–';
  $('p-loss').textContent = number(last.loss);
  $('p-lr').textContent = number(last.lr, 3);
  $('p-memory').textContent = last.peak_memory_bytes ? bytes(last.peak_memory_bytes) : '–';
  $('p-bar').max = total || 1;
  $('p-bar').value = total ? step || 0 : 0;
  $('run-state').textContent = p.state || (st.actions ? '' : 'run folder');
  $('folder').textContent = st.folder || '';
  for (const id of ['save-now', 'sample-now', 'stop']) $(id).disabled = !st.actions || p.state === 'finished' || p.state === 'stopped';
}

async function loadMetrics(st) {
  if (run.generation !== st.metrics_generation) { run.lines = []; run.generation = st.metrics_generation; }
  while (run.lines.length < st.metrics_lines) {
    const m = await getJSON('api/metrics?from=' + run.lines.length);
    if (m.generation !== run.generation) { run.lines = []; run.generation = m.generation; continue; }
    if (!m.lines.length) break;
    run.lines.push(...m.lines);
  }
  drawCharts();
}

function link(path) {
  return 'files/' + path.split('/').map(encodeURIComponent).join('/');
}

function showGallery(samples) {
  const gallery = $('gallery');
  if (!samples || !samples.length) return;
  const shown = {};
  for (const el of gallery.querySelectorAll('.prompt')) shown[el.dataset.prompt] = el;
  gallery.querySelector('.empty')?.remove();
  for (const prompt of samples) {
    let box = shown[prompt.prompt];
    if (!box) {
      box = document.createElement('div');
      box.className = 'prompt';
      box.dataset.prompt = prompt.prompt;
      box.innerHTML = '<div class="title"></div><a target="_blank"><img alt=""></a>' +
        '<div class="nav"><button class="prev">◀</button><input type="range" min="0" step="1">' +
        '<button class="next">▶</button><span class="where"></span></div>';
      gallery.appendChild(box);
      const range = box.querySelector('input');
      range.addEventListener('input', () => showImage(box));
      box.querySelector('.prev').addEventListener('click', () => { range.value = Math.max(0, +range.value - 1); showImage(box); });
      box.querySelector('.next').addEventListener('click', () => { range.value = Math.min(+range.max, +range.value + 1); showImage(box); });
    }
    const range = box.querySelector('input');
    const atNewest = !box.images || +range.value === box.images.length - 1;
    box.images = prompt.images;
    range.max = String(prompt.images.length - 1);
    if (atNewest) range.value = range.max;  // follows the newest checkpoint unless the user stepped back
    box.querySelector('.title').textContent = 'prompt ' + prompt.prompt;
    showImage(box);
  }
}

function showImage(box) {
  const image = box.images[+box.querySelector('input').value];
  if (!image) return;
  const url = link(image.path);
  const img = box.querySelector('img');
  if (img.getAttribute('src') !== url) img.setAttribute('src', url);
  img.alt = image.path;
  box.querySelector('a').setAttribute('href', url);
  box.querySelector('.where').textContent = `step ${image.step} (${+box.querySelector('input').value + 1}/${box.images.length}), seed ${image.seed}`;
}

function showFiles(listing) {
  const body = $('files').querySelector('tbody');
  body.textContent = '';
  for (const f of listing.files || []) {
    const row = document.createElement('tr');
    const name = document.createElement('td');
    const a = document.createElement('a');
    a.href = link(f.path);
    a.textContent = f.path;
    if (!/\.(png|jpe?g|webp|html|toml|txt|jsonl?|log)$/.test(f.path)) a.setAttribute('download', f.path.split('/').pop());
    name.appendChild(a);
    const size = document.createElement('td');
    size.className = 'size';
    size.textContent = bytes(f.size);
    const when = document.createElement('td');
    when.textContent = new Date(f.mtime * 1000).toLocaleString();
    row.append(name, size, when);
    body.appendChild(row);
  }
  showGallery(listing.samples);
}

async function loadFiles() {
  const response = await fetch('api/files', { credentials: 'same-origin', cache: 'no-store' });
  if (!response.ok) return;
  const text = await response.text();
  if (text === run.filesText) return;
  run.filesText = text;
  showFiles(JSON.parse(text));
  const details = await getJSON('api/details');
  $('config').textContent = details.config || '(no config.toml in this folder)';
  $('dataset-plan').textContent = details.dataset_plan || '(not recorded)';
}

// One refresh at a time; an update that arrives meanwhile is taken after it.
async function refresh(st) {
  run.state = st || run.state;
  if (run.busy) { run.again = true; return; }
  run.busy = true;
  try {
    do {
      run.again = false;
      const current = run.state || await getJSON('api/state');
      run.state = current;
      await loadMetrics(current);
      showProgress(current);
      await loadFiles();
    } while (run.again);
  } catch (e) {
    $('live').textContent = 'error: ' + e.message;
    $('live').className = 'badge bad';
  } finally {
    run.busy = false;
  }
}

async function act(what, button) {
  if (what === 'stop' && !button.classList.contains('confirm')) {
    // A second click confirms (no modal dialog: the page stays scriptable).
    button.classList.add('confirm');
    button.textContent = 'really stop?';
    setTimeout(() => { button.classList.remove('confirm'); button.textContent = 'stop'; }, 5000);
    return;
  }
  const response = await fetch('api/' + what, { method: 'POST', credentials: 'same-origin' });
  $('action-result').textContent = response.ok ? what + ' asked for' : what + ': ' + response.status;
}

function connect() {
  const events = new EventSource('events');
  events.addEventListener('update', (e) => {
    $('live').textContent = 'live';
    $('live').className = 'badge ok';
    refresh(JSON.parse(e.data));
  });
  events.onerror = () => {
    $('live').textContent = 'reconnecting';
    $('live').className = 'badge bad';
  };
}

window.addEventListener('DOMContentLoaded', () => {
  $('save-now').addEventListener('click', (e) => act('save', e.target));
  $('sample-now').addEventListener('click', (e) => act('sample', e.target));
  $('stop').addEventListener('click', (e) => act('stop', e.target));
  refresh(null);
  connect();
});
