// The two views of how a model learns. "Train on this": one step of the run's own trainer on the prompt's
// window (POST /api/train-step, on the server's lesson copy of the weights), its probabilities before and
// after, the gradient by layer and the update by role; repeated steps memorise the window, reset forgets
// them. "History": a slider over the steps whose weights the run kept (GET /api/history), showing the
// prompt's next-token bars, an attention map and a greedy continuation at each. Uses $, api, visible,
// showError, settings, drawBars and drawAttention (explore.js) and t (i18n.js).
"use strict";

const learn = { losses: [], last: null, history: null, seq: 0, shown: null };

const percent = (p) => `${(100 * p).toFixed(2)}%`;
const pieceOf = (token) => (typeof token === "string" ? token : token.piece);

// ---- Train on this ----

function showTrain() {
  drawTrain();
}

async function trainStep() {
  const steps = Math.min(100, Math.max(1, parseInt($("train-steps").value, 10) || 1));
  const lrText = $("train-lr").value.trim();
  const lr = lrText ? Number(lrText) : null;
  if (lr !== null && !(lr > 0 && Number.isFinite(lr))) return showError(t("train.bad_lr"));
  const text = $("train-random").checked ? null : $("prompt").value;
  $("train-step").disabled = true;
  $("train-summary").textContent = t("train.working");
  try {
    const data = await api("/api/train-step", { text, steps, lr });
    showError(null);
    learn.losses.push(...data.losses);  // the loss each step trained on, all steps since reset
    learn.last = data;
  } catch (error) {
    showError(error);
  } finally {
    $("train-step").disabled = false;
    drawTrain();
  }
}

async function trainReset() {
  try {
    await api("/api/train-step/reset", {});
    showError(null);
    [learn.losses, learn.last] = [[], null];
    drawTrain();
    $("train-summary").textContent = t("train.reset_done");
  } catch (error) {
    showError(error);
  }
}

function drawTrain() {
  const data = learn.last;
  const summary = $("train-summary");
  summary.dataset.trainedSteps = data ? data.trained_steps : 0;
  summary.textContent = data ? t("train.summary", { before: data.loss_before.toFixed(4), after: data.loss_after.toFixed(4),
    n: data.positions.length, steps: data.losses.length, lr: Number(data.lr).toPrecision(3), total: data.trained_steps,
    ms: Math.round(data.step_ms) }) : "";
  // The loss each step trained on, and the window's loss after the last one.
  drawLosses($("train-losses"), data ? [...learn.losses, data.loss_after] : []);
  drawNamedBars($("train-grads"), data ? data.grad_norm_by_layer : {}, "#3b6ea8");
  drawNamedBars($("train-updates"), data ? data.update_norm_by_role : {}, "#e07b39");
  drawTable(data);
}

function svgElement(name, attributes, text) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawLosses(svg, losses) {
  svg.replaceChildren();
  svg.dataset.points = losses.length;
  if (!losses.length) return;
  const width = +svg.getAttribute("width"), height = +svg.getAttribute("height"), left = 44, pad = 12;
  const top = Math.max(...losses), x = (i) => left + (losses.length > 1 ? i * (width - left - pad) / (losses.length - 1) : 0);
  const y = (v) => pad + (1 - v / (top || 1)) * (height - 2 * pad);  // from 0 at the bottom: memorising goes to 0
  svg.append(svgElement("line", { x1: left, y1: y(0), x2: width - pad, y2: y(0), stroke: "#ccc" }),
    svgElement("text", { x: left - 4, y: y(top) + 4, "text-anchor": "end" }, top.toFixed(2)),
    svgElement("text", { x: left - 4, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svgElement("polyline", { points: losses.map((v, i) => `${x(i)},${y(v)}`).join(" "), fill: "none", stroke: "#3b6ea8", "stroke-width": 2 }));
  losses.forEach((v, i) => svg.append(svgElement("circle", { cx: x(i), cy: y(v), r: 3, fill: "#3b6ea8" },
    undefined)));
}

// A layer's or a parameter role's name as the server gives it ("block 0", "matrix"), in the page's language
// when it is one of the names the trainer uses.
function nameIn(name) {
  const block = name.match(/^block (\d+)$/);
  if (block) return t("train.block", { i: block[1] });
  const key = `train.name.${name.replace(/[^a-z]+/g, "_")}`;
  return key in TEXTS.en ? t(key) : name;
}

function drawNamedBars(svg, values, colour) {
  const entries = Object.entries(values), rowH = 18, labelW = 110, valueW = 70;
  const width = +svg.getAttribute("width"), most = Math.max(...entries.map(([, v]) => v), 0) || 1;
  svg.replaceChildren();
  svg.setAttribute("height", Math.max(rowH, entries.length * rowH));
  entries.forEach(([name, v], i) => {
    const g = svgElement("g", { transform: `translate(0, ${i * rowH})`, class: "named-bar" });
    g.dataset.name = name;
    g.dataset.value = v;
    g.append(svgElement("text", { x: labelW - 6, y: 13, "text-anchor": "end" }, nameIn(name)),
      svgElement("rect", { x: labelW, y: 3, height: rowH - 6, width: Math.max(1, v / most * (width - labelW - valueW)), fill: colour }),
      svgElement("text", { x: width - valueW + 4, y: 13 }, Number(v).toPrecision(3)));
    svg.append(g);
  });
}

function drawTable(data) {
  const body = $("train-table").querySelector("tbody");
  body.replaceChildren();
  $("train-table").hidden = !data;
  if (!data) return;
  const tops = (list) => list.slice(0, 3).map((c) => `${visible(c.piece)} ${percent(c.prob)}`).join(", ");
  data.positions.forEach((p, i) => {
    const row = document.createElement("tr");
    Object.assign(row.dataset, { target: p.target, pBefore: p.p_before, pAfter: p.p_after });
    const change = p.p_after - p.p_before;
    const cells = [String(p.index), visible(pieceOf(data.tokens[i])), visible(p.piece), percent(p.p_before),
      percent(p.p_after), `${change >= 0 ? "+" : "−"}${(100 * Math.abs(change)).toFixed(2)}`,
      `${tops(p.top_before)} → ${tops(p.top_after)}`];
    cells.forEach((text, c) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (c === 5) cell.className = change >= 0 ? "up" : "down";
      row.appendChild(cell);
    });
    body.appendChild(row);
  });
}

// ---- History ----

async function refreshHistory() {
  const seq = ++learn.seq;  // only the latest slider position may draw
  try {
    if (!learn.history) {
      learn.history = await api("/api/history");
      const slider = $("history-slider");
      slider.max = Math.max(0, learn.history.steps.length - 1);
      slider.value = slider.max;  // start at the run's last kept weights
    }
    const steps = learn.history.steps;
    $("history-none").hidden = steps.length > 0;
    $("history-slider").disabled = !steps.length;
    if (!steps.length) return;
    const step = steps[+$("history-slider").value];
    const s = settings();
    const layer = Math.max(0, (state.info ? state.info.n_layer : 1) - 1);
    const [next, attention, more] = await Promise.all([
      api("/api/next", { ...s, step }),
      api("/api/attention", { text: s.text, layer, head: 0, step }),
      api("/api/history/continue", { text: s.text, step, max_new_tokens: 40 }),
    ]);
    if (seq !== learn.seq) return;
    showError(null);
    learn.shown = { step, next, s, more };
    drawHistory();
    drawAttention(attention, $("history-attn"), $("history-hover"));
  } catch (error) {
    if (seq === learn.seq) showError(error);
  }
}

function drawHistory() {
  if (!learn.shown) return;
  const { step, next, s, more } = learn.shown;
  $("history-label").textContent = t("history.label", { step, final: learn.history.final });
  drawBars(next, s, $("history-bars"), $("history-bars-title"));
  $("history-bars").dataset.step = step;
  const prompt = document.createElement("span");
  prompt.textContent = more.text.slice(0, more.text.length - more.continuation.length);
  const added = document.createElement("b");
  added.textContent = visible(more.continuation);  // an untrained model's spaces and newlines show
  $("history-text").replaceChildren(prompt, added);
  $("history-text").dataset.step = step;
}

// ---- wiring (called once by explore.js's start) ----

function startLearn() {
  $("train-step").addEventListener("click", trainStep);
  $("train-reset").addEventListener("click", trainReset);
  $("history-slider").addEventListener("input", refreshHistory);
  document.addEventListener("gptlab:language", () => {
    drawTrain();
    drawHistory();
  });
  drawTrain();
}
