// The exploration page: prompt -> tokens -> next-token distribution, stepping, attention, embeddings.
// Plain JS talking to the JSON endpoints under /api (documented in docs/concepts/serving.md); no libraries.
// Every word comes from i18n.js's t(); the train and history views live in learn.js, the step-through in
// trace.js.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, view: "next", seq: 0, tokens: [], context: 0, next: null, embeddings: null, selected: null,
  neighbours: [] };

// Whitespace and control characters made visible, so a token like "\n" shows as something.
function visible(piece) {
  return piece.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5")
    .replace(/[\u0000-\u001f\u007f]/g, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
}

// Work not yet shown (a pending keystroke refresh or a request in flight), published as
// <body data-busy="N"> so a reader or a test can tell a settled page from one about to change.
let busy = 0;
function busyBy(delta) {
  busy += delta;
  document.body.dataset.busy = busy;
}

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  busyBy(1);
  let response, data;
  try {
    response = await fetch(path, options);
    data = await response.json();
  } finally {
    busyBy(-1);
  }
  if (!response.ok) {
    // FastAPI puts our message in detail (a string), or validation errors (a list).
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(detail);
  }
  return data;
}

function showError(error) {
  $("error").hidden = !error;
  $("error").textContent = error ? String(error.message || error) : "";
}

function settings() {
  return { text: $("prompt").value, k: Math.max(1, parseInt($("k").value, 10) || 10),
           temperature: Math.max(0, parseFloat($("temperature").value) || 0) };
}

// ---- prompt, tokens and the next-token bar chart ----

async function refresh() {
  const seq = ++state.seq;  // only the latest request may draw: typing fires many
  const s = settings();
  try {
    const data = await api("/api/next", s);
    if (seq !== state.seq) return;
    showError(null);
    [state.tokens, state.context, state.next] = [data.tokens, data.context, [data, s]];
    drawTokens(data.tokens, data.context);
    drawBars(data, s);
    if (state.view === "attention") await refreshAttention();
    if (state.view === "trace") await refreshTrace();
    if (state.view === "history") await refreshHistory();
  } catch (error) {
    if (seq !== state.seq) return;
    showError(error);
    drawTokens([], 0);
    drawBars({ candidates: [] }, s);
  }
}

function drawTokens(tokens, context) {
  const box = $("tokens");
  box.replaceChildren();
  tokens.forEach((tok, i) => {
    const chip = document.createElement("span");
    chip.className = "tok" + (i < tokens.length - context ? " outside" : "");
    chip.title = t("prompt.chip", { i, id: tok.id });
    chip.innerHTML = "<span></span><small></small>";
    chip.firstChild.textContent = visible(tok.piece);
    chip.lastChild.textContent = tok.id;
    box.appendChild(chip);
  });
}

// The top candidates as bars in svg (the next-token view's, or the history view's); clicking one appends it.
function drawBars(data, s, svg = $("bars"), title = $("bars-title")) {
  const rows = data.candidates;
  const rowH = 26, labelW = 90, valueW = 70, width = svg.clientWidth || 800;
  const barMax = width - labelW - valueW;
  svg.replaceChildren();
  svg.setAttribute("height", Math.max(rowH, rows.length * rowH));
  svg.dataset.prompt = s.text;  // lets a reader (or a test) know which prompt is drawn
  const total = rows.reduce((sum, c) => sum + c.prob, 0);
  title.textContent = rows.length ?
    t("next.title_top", { n: rows.length, vocab: state.info ? state.info.vocab_size : "?",
      temperature: s.temperature === 0 ? t("next.greedy_temperature") : s.temperature, total: (100 * total).toFixed(1) }) :
    t("next.title");
  rows.forEach((c, i) => {
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "bar");
    g.setAttribute("transform", `translate(0, ${i * rowH})`);
    g.dataset.id = c.id;
    g.dataset.prob = c.prob;
    g.innerHTML = `<title></title><text x="${labelW - 8}" y="17" text-anchor="end"></text>` +
      `<rect class="track" x="${labelW}" y="4" height="${rowH - 8}" width="${barMax}" fill="#f1f1f1"></rect>` +
      `<rect class="fill" x="${labelW}" y="4" height="${rowH - 8}" width="${Math.max(1, c.prob * barMax)}" fill="#3b6ea8"></rect>` +
      `<text x="${labelW + barMax + 6}" y="17"></text>`;
    const [tip, label, , , value] = g.children;
    tip.textContent = t("next.bar_title", { id: c.id });
    label.textContent = `${visible(c.piece)} (${c.id})`;
    value.textContent = `${(100 * c.prob).toFixed(2)}%`;
    g.addEventListener("click", () => step({ mode: "token", token_id: c.id }));
    svg.appendChild(g);
  });
}

async function step(choice) {
  const s = settings();
  try {
    const data = await api("/api/step", { text: s.text, temperature: s.temperature, ...choice });
    $("prompt").value = data.text;
    await refresh();
  } catch (error) {
    showError(error);
  }
}

// ---- attention heatmap ----

function fillSelect(select, n) {
  if (select.options.length === n) return;
  select.replaceChildren(...Array.from({ length: n }, (_, i) => new Option(String(i), String(i))));
}

async function refreshAttention() {
  const body = { text: $("prompt").value, layer: +$("layer").value || 0, head: +$("head").value || 0 };
  try {
    drawAttention(await api("/api/attention", body));
  } catch (error) {
    showError(error);
  }
}

// A causal attention map (T x T) in canvas, with hover text in hover (the attention view's, or history's).
function drawAttention(data, canvas = $("attn"), hover = $("attn-hover")) {
  const T = data.tokens.length;
  const cell = Math.max(3, Math.min(28, Math.floor(560 / T)));
  const margin = cell >= 10 ? 34 : 0;  // room for token labels when cells are big enough to read
  canvas.width = canvas.height = margin + T * cell;
  canvas.dataset.size = T;
  canvas.dataset.cell = cell;
  canvas.dataset.margin = margin;
  canvas.dataset.layer = data.layer;
  canvas.dataset.head = data.head;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let r = 0; r < T; r++) {
    for (let c = 0; c <= r; c++) {  // c > r is the future: never drawn
      // sqrt scale: small weights stay visible next to a dominant one.
      const w = Math.sqrt(Math.max(0, data.weights[r][c]));
      const shade = Math.round(255 * (1 - w));
      ctx.fillStyle = `rgb(${shade}, ${Math.round(255 - 150 * w)}, ${Math.round(255 - 60 * w)})`;
      ctx.fillRect(margin + c * cell, margin + r * cell, cell, cell);
    }
  }
  ctx.strokeStyle = "#ddd";
  ctx.strokeRect(margin + 0.5, margin + 0.5, T * cell - 1, T * cell - 1);
  if (margin) {
    ctx.fillStyle = "#333";
    ctx.font = `${Math.min(13, cell - 2)}px monospace`;
    ctx.textAlign = "center";
    data.tokens.forEach((t, i) => {
      const label = visible(t.piece).slice(0, 3);
      ctx.fillText(label, margin + i * cell + cell / 2, margin - 8);
      ctx.fillText(label, margin / 2, margin + i * cell + cell / 2 + 4);
    });
  }
  canvas.onmousemove = (event) => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - rect.left - margin) / cell);
    const r = Math.floor((event.clientY - rect.top - margin) / cell);
    if (r < 0 || c < 0 || r >= T || c >= T) return;
    const piece = (i) => JSON.stringify(data.tokens[i].piece);
    hover.textContent = t("attention.cell", { row: r, rowPiece: piece(r), col: c, colPiece: piece(c),
      weight: c > r ? t("attention.future") : data.weights[r][c].toFixed(4) });
  };
}

// ---- embeddings ----

async function loadEmbeddings() {
  if (state.embeddings) return drawEmbeddings();
  try {
    state.embeddings = await api("/api/embeddings");
    drawEmbeddings();
  } catch (error) {
    showError(error);
  }
}

function embeddingScale() {
  const canvas = $("emb"), pts = state.embeddings.points, pad = 20;
  // A loop rather than Math.min(...xs): spreading a 100k-token vocabulary overflows the call stack.
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of pts) {
    [x0, x1, y0, y1] = [Math.min(x0, p.x), Math.max(x1, p.x), Math.min(y0, p.y), Math.max(y1, p.y)];
  }
  const sx = (canvas.width - 2 * pad) / ((x1 - x0) || 1), sy = (canvas.height - 2 * pad) / ((y1 - y0) || 1);
  return (p) => [pad + (p.x - x0) * sx, canvas.height - pad - (p.y - y0) * sy];
}

function drawEmbeddings() {
  const canvas = $("emb"), ctx = canvas.getContext("2d"), pts = state.embeddings.points;
  const [a, b] = state.embeddings.explained;
  $("emb-caption").textContent = t("embeddings.caption", { n: pts.length, a: (100 * a).toFixed(1), b: (100 * b).toFixed(1) });
  const at = embeddingScale();
  const near = new Set(state.neighbours.map((n) => n.id));
  const asText = pts.length <= 400;  // a small vocabulary is drawn as its tokens, a large one as dots
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "13px monospace";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (const p of pts) {
    const [x, y] = at(p);
    ctx.fillStyle = p.id === state.selected ? "#d0312d" : near.has(p.id) ? "#e07b39" : "#3b6ea8";
    if (asText) ctx.fillText(visible(p.piece), x, y);
    else ctx.fillRect(x - 1, y - 1, 2.5, 2.5);
  }
  canvas.dataset.points = pts.length;
}

function pointAt(event) {
  const canvas = $("emb"), rect = canvas.getBoundingClientRect(), at = embeddingScale();
  const mx = (event.clientX - rect.left) * canvas.width / rect.width;
  const my = (event.clientY - rect.top) * canvas.height / rect.height;
  let best = null, bestD = 100;  // within 10 px
  for (const p of state.embeddings.points) {
    const [x, y] = at(p);
    const d = (x - mx) ** 2 + (y - my) ** 2;
    if (d < bestD) [best, bestD] = [p, d];
  }
  return best;
}

async function selectToken(id) {
  try {
    const data = await api(`/api/neighbours?id=${id}&k=10`);
    state.selected = id;
    state.neighbours = data.neighbours;
    state.neighboursOf = data.token;
    drawNeighboursTitle();
    $("neighbours").replaceChildren(...data.neighbours.map((n) => {
      const li = document.createElement("li");
      li.textContent = `${visible(n.piece)}  (id ${n.id})  ${n.cosine.toFixed(3)}`;
      return li;
    }));
    drawEmbeddings();
  } catch (error) {
    showError(error);
  }
}

function drawNeighboursTitle() {
  if (!state.neighboursOf) return;
  $("neighbours-title").textContent = t("embeddings.neighbours", { piece: visible(state.neighboursOf.piece), id: state.neighboursOf.id });
}

// ---- wiring ----

function drawInfo() {
  const i = state.info;
  $("info").textContent = t(i.arch === "encdec" ? "info.encdec" : "info.line", { run: i.run, step: i.step.toLocaleString(),
    layers: i.n_layer, heads: i.n_head, dims: i.n_embd, context: i.block_size, vocab: i.vocab_size, tokenizer: i.tokenizer });
}

// After a language switch: every text the scripts built is drawn again in the new language.
function redrawInLanguage() {
  if (!state.info) return;
  drawInfo();
  if (state.next) drawBars(...state.next);
  drawTokens(state.tokens, state.context);
  if (state.embeddings) drawEmbeddings();
  drawNeighboursTitle();
}

const VIEWS = ["next", "attention", "embeddings", "trace", "train", "history"];

function showView(view) {
  state.view = view;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  if (view === "attention") refreshAttention();
  if (view === "trace") refreshTrace();
  if (view === "embeddings") loadEmbeddings();
  if (view === "train") showTrain();
  if (view === "history") refreshHistory();
}

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (error) {
    return showError(error);
  }
  const i = state.info;
  document.addEventListener("gptlab:language", redrawInLanguage);
  drawInfo();
  if (i.arch === "encdec") return;  // encdec.js shows this run's source -> target view instead
  fillSelect($("layer"), i.n_layer);
  fillSelect($("head"), i.n_head);
  let timer = null;
  const later = () => {  // refresh once typing pauses, not on every keystroke
    if (timer === null) busyBy(1);
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; refresh().finally(() => busyBy(-1)); }, 150);
  };
  $("prompt").addEventListener("input", later);
  $("k").addEventListener("input", later);
  $("temperature").addEventListener("input", later);
  $("greedy").addEventListener("click", () => step({ mode: "greedy" }));
  $("sample").addEventListener("click", () => step({ mode: "sample" }));
  $("layer").addEventListener("change", refreshAttention);
  $("head").addEventListener("change", refreshAttention);
  startTrace();  // trace.js: the step-through view's buttons and arrow keys
  startLearn();  // learn.js: the train and history views' controls
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("emb").addEventListener("mousemove", (event) => {
    const p = state.embeddings && pointAt(event);
    if (p) $("emb-hover").textContent = `${JSON.stringify(p.piece)} (id ${p.id})`;
  });
  $("emb").addEventListener("click", (event) => {
    const p = state.embeddings && pointAt(event);
    if (p) selectToken(p.id);
  });
  $("emb-pick").addEventListener("change", () => {
    const text = $("emb-pick").value.replace(/\\n/g, "\n");
    const p = state.embeddings && state.embeddings.points.find((q) => q.piece === text);
    if (p) selectToken(p.id);
    else showError(t("embeddings.unknown", { piece: JSON.stringify(text) }));
  });
  await refresh();
}

start();
