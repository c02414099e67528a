// An encoder–decoder run's view: the decoder's self-attention and its cross-attention to the source,
// side by side, for a source and target the user types. Takes over the page only for arch=encdec (explore.js
// writes the run's line; words from i18n.js's t).

(() => {
  const el = (id) => document.getElementById(id);

  function fill(select, n) {
    if (select.options.length === n) return;
    select.replaceChildren(...Array.from({ length: n }, (_, i) => new Option(String(i), String(i))));
  }

  // A heatmap of weights (rows x cols) with row and column token labels; causal hides c > r.
  function heatmap(canvas, weights, rows, cols, causal, describe) {
    const cell = Math.max(6, Math.min(28, Math.floor(420 / Math.max(rows.length, cols.length))));
    const margin = 34;
    canvas.width = margin + cols.length * cell;
    canvas.height = margin + rows.length * cell;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    weights.forEach((row, r) => row.forEach((value, c) => {
      if (causal && c > r) return;
      const w = Math.sqrt(Math.max(0, value));  // sqrt: small weights stay visible beside a large one
      ctx.fillStyle = `rgb(${Math.round(255 * (1 - w))}, ${Math.round(255 - 150 * w)}, ${Math.round(255 - 60 * w)})`;
      ctx.fillRect(margin + c * cell, margin + r * cell, cell, cell);
    }));
    ctx.fillStyle = "#333";
    ctx.font = `${Math.min(13, cell - 2)}px monospace`;
    ctx.textAlign = "center";
    const label = (t) => JSON.stringify(t.piece).slice(1, -1).slice(0, 3);
    cols.forEach((t, c) => ctx.fillText(label(t), margin + c * cell + cell / 2, margin - 8));
    rows.forEach((t, r) => ctx.fillText(label(t), margin / 2, margin + r * cell + cell / 2 + 4));
    canvas.onmousemove = (event) => {
      const box = canvas.getBoundingClientRect();
      const c = Math.floor((event.clientX - box.left - margin) / cell);
      const r = Math.floor((event.clientY - box.top - margin) / cell);
      if (r >= 0 && c >= 0 && r < rows.length && c < cols.length) el("encdec-hover").textContent = describe(r, c);
    };
  }

  async function refresh() {
    const body = { source: el("encdec-source").value, target: el("encdec-target").value,
                   layer: +el("encdec-layer").value || 0, head: +el("encdec-head").value || 0 };
    const response = await fetch("/api/encdec/attention", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await response.json();
    const error = el("error");
    if (!response.ok) {
      error.textContent = data.detail || response.statusText;
      error.hidden = false;
      return;
    }
    error.hidden = true;
    const src = data.source_tokens, tgt = data.target_tokens;
    const quote = (t) => JSON.stringify(t.piece);
    heatmap(el("encdec-self"), data.self, tgt, tgt, true,
      (r, c) => t("encdec.self_cell", { r, rp: quote(tgt[r]), c, cp: quote(tgt[c]),
        w: c > r ? t("attention.future") : data.self[r][c].toFixed(4) }));
    heatmap(el("encdec-cross"), data.cross, tgt, src, false,
      (r, c) => t("encdec.cross_cell", { r, rp: quote(tgt[r]), c, cp: quote(src[c]), w: data.cross[r][c].toFixed(4) }));
  }

  async function start() {
    const info = await (await fetch("/api/info")).json();
    if (info.arch !== "encdec") return;
    for (const id of ["prompt-panel", "view-next", "view-attention", "view-embeddings"]) el(id).hidden = true;
    document.querySelector("nav").hidden = true;
    el("prompt-panel").after(el("error"));  // errors stay visible with the prompt panel hidden
    el("view-encdec").hidden = false;
    fill(el("encdec-layer"), info.n_layer);
    fill(el("encdec-head"), info.n_head);
    el("encdec-source").value = "秦川雄帝宅";
    el("encdec-target").value = "函谷壯皇居";
    for (const id of ["encdec-source", "encdec-target", "encdec-layer", "encdec-head"]) {
      el(id).addEventListener(id.endsWith("layer") || id.endsWith("head") ? "change" : "input", refresh);
    }
    await refresh();
  }

  start();
})();
