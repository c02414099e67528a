// The step-through view: one forward pass of the prompt, stage by stage (POST /api/trace).
// The architecture is drawn from the modules the server reports; each stage sits in the module that
// computed it. Choosing a stage (click, or the arrow keys) fetches that stage's tensor as a heatmap,
// sampled on the server, and the walkthrough (walkthrough.js) explains it beside the diagram of the data's
// path. Uses $, api, visible and showError from explore.js, t from i18n.js.
"use strict";

const trace = { stage: 0, head: 0, seq: 0, data: null };

async function refreshTrace() {
  const seq = ++trace.seq;  // only the latest request may draw: arrow keys fire many
  try {
    const data = await api("/api/trace", { text: $("prompt").value, stage: trace.stage, head: trace.head });
    if (seq !== trace.seq) return;
    trace.data = data;
    drawArchitecture(data);
    drawStage(data);
  } catch (error) {
    if (seq !== trace.seq) return;
    if (trace.stage !== 0 || trace.head !== 0) {  // the prompt changed under a stage or head it lacks
      [trace.stage, trace.head] = [0, 0];
      return refreshTrace();
    }
    showError(error);
  }
}

function goToStage(index) {
  const n = trace.data ? trace.data.stages.length : 1;
  trace.stage = Math.max(0, Math.min(n - 1, index));
  return refreshTrace();
}

// ---- the architecture: nested module boxes, the stages inside the module that computed them ----

function drawArchitecture(data) {
  const owned = new Map();  // module path -> its stages
  for (const s of data.stages) {
    if (!owned.has(s.owner)) owned.set(s.owner, []);
    owned.get(s.owner).push(s);
  }
  const first = new Map();  // module path -> the first stage computed inside it
  const firstIn = (node) => {
    let best = Math.min(...(owned.get(node.name) || []).map((s) => s.index), Infinity);
    for (const child of node.children) best = Math.min(best, firstIn(child));
    first.set(node.name, best);
    return best;
  };
  firstIn(data.architecture);

  const box = (node) => {
    const div = document.createElement("div");
    div.className = "arch-box";
    div.dataset.module = node.name;
    const head = document.createElement("div");
    head.className = "arch-head";
    head.textContent = `${node.name ? node.name.split(".").pop() + " · " : ""}${node.module}` +
      (node.detail ? ` ${node.detail}` : "");
    div.appendChild(head);
    // Children and own stages in the order the data reaches them; a module no stage is recorded in
    // (dropout) sits just before the next one that has, or at the end.
    const items = [];
    let pending = [];
    for (const child of node.children) {
      pending.push(box(child));
      if (first.get(child.name) === Infinity) continue;
      pending.forEach((element, i) => items.push([first.get(child.name) - (pending.length - i) * 1e-3, element]));
      pending = [];
    }
    pending.forEach((element, i) => items.push([Infinity, element]));
    for (const s of owned.get(node.name) || []) items.push([s.index, chip(s)]);
    items.sort((a, b) => (a[0] > b[0]) - (a[0] < b[0]));  // stable: trailing modules keep their order
    for (const [, element] of items) div.appendChild(element);
    return div;
  };
  $("arch").replaceChildren(box(data.architecture));
  const current = $("arch").querySelector(".stage.current");
  if (current) current.scrollIntoView({ block: "nearest" });  // a large model's list scrolls along
}

function chip(s) {
  const b = document.createElement("button");
  b.className = "stage" + (s.index === trace.stage ? " current" : "");
  b.dataset.index = s.index;
  b.textContent = s.name.split(".").pop();
  b.title = `${s.name}: ${s.op} → [${s.axes.replace(/ /g, "×")}]`;
  b.addEventListener("click", () => goToStage(s.index));
  return b;
}

// ---- one stage: its operation, shape, statistics and heatmap ----

// "[T×C] · W [C×3C]" with the sizes: "[6×32] · W [32×96]".
function withSizes(text, dims) {
  return text.replace(/\[([^\]]+)\]/g, (whole, inner) => {
    const parts = inner.split("×").map((axis) => {
      const m = axis.trim().match(/^(\d*)([A-Za-z]+)(?:\/(\d+))?$/);
      return m && m[2] in dims ? String((+m[1] || 1) * dims[m[2]] / (+m[3] || 1)) : null;
    });
    return parts.includes(null) ? whole : `[${parts.join("×")}]`;
  });
}

function drawStage(data) {
  const s = data.stages[trace.stage], view = data.stage;
  const axes = `[${s.axes.replace(/ /g, "×")}]`;
  $("stage-title").textContent = `${trace.stage + 1} / ${data.stages.length}  ${s.name}  (${s.module})`;
  const op = opText(s);  // walkthrough.js: the op in the page's language
  $("stage-op").textContent = `${op} → ${axes}`;
  const sizes = { op: withSizes(op, data.dims), shape: withSizes(axes, data.dims) };
  $("stage-sizes").textContent = `${sizes.op} → ${sizes.shape}`;
  const fmt = (v) => (v === null ? "—" : Number(v).toPrecision(4));
  const width = s.shape[s.shape.length - 1];
  $("stage-stats").textContent = t("trace.stats", { shape: s.shape.join("×"), mean: fmt(s.stats.mean),
    std: fmt(s.stats.std), min: fmt(s.stats.min), max: fmt(s.stats.max) }) +
    (view.rows.length < data.dims.T ? t("trace.rows_shown", { n: view.rows.length, T: data.dims.T }) : "") +
    (s.axes.endsWith("V") ? t("trace.vocab_columns", { n: view.columns.length, V: data.dims.V }) :
      view.columns.length < width ? t("trace.columns_shown", { n: view.columns.length, m: width }) : "");
  $("trace-head-label").hidden = !view.heads;
  if (view.heads) {
    fillSelect($("trace-head"), view.heads);
    $("trace-head").value = String(view.head);
  }
  const best = data.top[0];
  $("trace-top").dataset.id = best.id;
  $("trace-top").textContent = s.name === "probs" || s.name === "logits" ?
    t("trace.top", { piece: visible(best.piece), id: best.id, pct: (100 * best.prob).toFixed(2) }) : "";
  drawHeatmap(data, view);
  drawDiagram(data, trace.stage);
  drawWalk(data, trace.stage, sizes);
}

function drawHeatmap(data, view) {
  const canvas = $("heat"), rows = view.rows.length, cols = view.columns.length;
  const cellW = Math.max(2, Math.min(28, Math.floor(720 / cols)));
  const cellH = Math.max(3, Math.min(22, Math.floor(480 / rows)));
  const left = 48, top = cellW >= 14 ? 40 : 8;  // room for labels
  canvas.width = left + cols * cellW;
  canvas.height = top + rows * cellH;
  Object.assign(canvas.dataset, { stage: view.name, index: view.index, rows, cols, head: view.head ?? "" });
  let low = Infinity, high = -Infinity;
  for (const row of view.values) for (const v of row) if (v !== null) [low, high] = [Math.min(low, v), Math.max(high, v)];
  const signed = low < 0;  // signed values: blue below zero, red above; otherwise white to blue
  const scale = signed ? Math.max(-low, high) || 1 : high || 1;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  view.values.forEach((row, r) => row.forEach((v, c) => {
    if (v === null) {
      ctx.fillStyle = "#e4e4e4";  // masked (−∞): the future
    } else if (signed) {
      const w = Math.min(1, Math.abs(v) / scale), fade = Math.round(255 * (1 - w));
      ctx.fillStyle = v >= 0 ? `rgb(255, ${fade}, ${fade})` : `rgb(${fade}, ${fade}, 255)`;
    } else {
      const w = Math.sqrt(Math.min(1, v / scale));  // sqrt: small weights stay visible
      ctx.fillStyle = `rgb(${Math.round(255 * (1 - w))}, ${Math.round(255 - 150 * w)}, ${Math.round(255 - 60 * w)})`;
    }
    ctx.fillRect(left + c * cellW, top + r * cellH, cellW, cellH);
  }));
  ctx.fillStyle = "#333";
  ctx.font = "11px monospace";
  ctx.textAlign = "right";
  view.rows.forEach((p, r) => {
    if (cellH >= 10) ctx.fillText(`${p} ${visible(data.tokens[p].piece).slice(0, 2)}`, left - 4, top + r * cellH + cellH / 2 + 4);
  });
  ctx.textAlign = "center";
  if (top > 8) view.columns.forEach((col, c) => ctx.fillText(visible(col.label).slice(0, 3), left + c * cellW + cellW / 2, top - 6));
  canvas.onmousemove = (event) => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - rect.left - left) / cellW), r = Math.floor((event.clientY - rect.top - top) / cellH);
    if (r < 0 || c < 0 || r >= rows || c >= cols) return;
    const p = view.rows[r], v = view.values[r][c], col = view.columns[c];
    const what = view.kind === "attention" ? t("trace.cell_attention", { col: col.label }) :
      col.id !== undefined ? t("trace.cell_token", { piece: JSON.stringify(col.label), id: col.id }) :
        t("trace.cell_column", { col: col.label });
    $("heat-hover").textContent = t("trace.cell", { p, piece: JSON.stringify(data.tokens[p].piece), what,
      value: v === null ? t("trace.masked") : v });
  };
}

// ---- wiring (called once by explore.js's start) ----

function startTrace() {
  $("trace-prev").addEventListener("click", () => goToStage(trace.stage - 1));
  $("trace-next").addEventListener("click", () => goToStage(trace.stage + 1));
  $("trace-head").addEventListener("change", () => { trace.head = +$("trace-head").value; refreshTrace(); });
  document.addEventListener("gptlab:language", () => { if (trace.data) drawStage(trace.data); });
  document.addEventListener("keydown", (event) => {
    if (state.view !== "trace" || ["TEXTAREA", "INPUT", "SELECT"].includes(event.target.tagName)) return;
    if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      goToStage(trace.stage + (event.key === "ArrowRight" ? 1 : -1));
    }
  });
}
