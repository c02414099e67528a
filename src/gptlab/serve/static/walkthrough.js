// The step-through view's guided walkthrough: for the current stage, what it computes in the words of the
// documents (词元, 嵌入, 自注意力 …), its formula, and the live shapes and numbers of the user's own model;
// and the diagram of the data's path (tokens → embedding → blocks → final norm → head → softmax) with the
// stage's component lit. Stages come from /api/trace (named by the model's modules); which text applies is
// read from the stage's name, so a variant's own stages (RoPE, RMSNorm, QK-norm, ReLU², SwiGLU, soft-cap,
// cross-attention) get their text only when the model has them. Uses t and i18n (i18n.js), $ and visible.
"use strict";

// concept -> the diagram component it lights, its formula, and its title and text in both languages.
// {C}, {T}, {H}, {D}, {F}, {V} are the model's live sizes.
const CONCEPTS = {
  tokens: {
    part: "tokens", formula: "ids = tokenizer(text)  [T]",
    en: ["Tokens", "The tokenizer cut your prompt into {T} tokens and replaced each by its id, its row number in a vocabulary of {V}. The model never sees characters, only these ids."],
    zh: ["词元", "分词器把提示切成 {T} 个词元，每个词元换成它的 id，也就是它在 {V} 个词元的词表里的行号。模型看不到字，只看到这些 id。"],
  },
  embedding: {
    part: "embedding", formula: "x = W_te[id]",
    en: ["Token embedding", "Each id picks its row of the embedding matrix W_te [V×C]: a vector of {C} numbers. Training moves these vectors so that tokens used alike end up close together."],
    zh: ["词元嵌入", "每个 id 取出嵌入矩阵 W_te [V×C] 里的一行：一个 {C} 维的向量。训练会移动这些向量，让用法相近的词元靠在一起。"],
  },
  position: {
    part: "embedding", formula: "p = W_pe[t],  t = 0 … T−1",
    en: ["Position embedding", "Attention by itself cannot tell first from last, so a second learned table W_pe gives each position t its own vector of {C} numbers."],
    zh: ["位置嵌入", "注意力本身分不出先后，所以另一张可学习的表 W_pe 给每个位置 t 一个自己的 {C} 维向量。"],
  },
  embed_sum: {
    part: "embedding", formula: "x = W_te[id] + W_pe[t]",
    en: ["Embedding + position", "The two are added. This [T×C] matrix starts the residual stream: every block reads it and adds its own correction to it."],
    zh: ["词元嵌入 + 位置嵌入", "两者相加。这个 [T×C] 矩阵是残差流的起点：后面每个块都读它，再把自己的修正加进去。"],
  },
  rope_angles: {
    part: "embedding", formula: "θ(t, i) = t · base^(−2i/D)",
    en: ["RoPE: rotary positions", "This model adds no position vector. Instead, inside attention, each pair of channels of q and k is rotated by an angle that grows with the position t; these are the angles, one per position and channel pair."],
    zh: ["RoPE：旋转位置编码", "这个模型不加位置嵌入，而是在注意力内部把 q 和 k 的每一对通道按位置 t 旋转一个角度；这里是每个位置、每对通道的角度。"],
  },
  ln_stats: {
    part: "norm", formula: "mean = Σx / C,  std = √(Σ(x − mean)² / C)",
    en: ["Layer normalisation: the statistics", "For each position, the mean and the standard deviation of its {C} numbers: what layer normalisation will subtract and divide by."],
    zh: ["层归一化：统计量", "对每个位置，求它 {C} 个数的均值和标准差：层归一化接下来要减去和除以的量。"],
  },
  layernorm: {
    part: "norm", formula: "(x − mean) / std · γ + β",
    en: ["Layer normalisation", "Each position's vector is shifted to mean 0 and scaled to standard deviation 1, then scaled by γ and shifted by β, both learned. The sub-layer reads this normalised copy; the residual stream itself is left as it was (pre-norm)."],
    zh: ["层归一化", "每个位置的向量减去均值、除以标准差，再乘 γ、加 β（两者都是学出来的）。子层读的是这份归一化后的副本，残差流本身保持不变（前置归一化）。"],
  },
  rms_stats: {
    part: "norm", formula: "rms = √(Σx² / C)",
    en: ["RMSNorm: the statistic", "For each position, the root mean square of its {C} numbers. RMSNorm, the modern variant of layer normalisation, subtracts no mean."],
    zh: ["RMSNorm：统计量", "对每个位置求它 {C} 个数的均方根。RMSNorm 是层归一化的现代变体，不减均值。"],
  },
  rmsnorm: {
    part: "norm", formula: "x / rms · γ",
    en: ["RMSNorm", "Each position's vector is divided by its root mean square and scaled by the learned γ: one step less than layer normalisation, and it trains as well."],
    zh: ["RMSNorm", "每个位置的向量除以它的均方根，再乘学出来的 γ：比层归一化少一步，训练效果相当。"],
  },
  qkv: {
    part: "attention", formula: "[q k v] = x · W_qkv",
    en: ["Self-attention: queries, keys, values", "One matrix W_qkv [C×3C] turns each position's vector into three: a query q (what am I looking for?), a key k (what do I hold?) and a value v (what do I pass on?)."],
    zh: ["自注意力：查询、键、值", "一个矩阵 W_qkv [C×3C] 把每个位置的向量变成三个：查询 q（我在找什么）、键 k（我有什么）、值 v（我传出去什么）。"],
  },
  split: {
    part: "attention", formula: "C = H × D",
    en: ["Heads", "The {C} channels are split into {H} heads of {D}. Each head attends on its own and can look for a different kind of relation between positions."],
    zh: ["多头", "{C} 个通道分成 {H} 个头，每个头 {D} 个通道。每个头各自做注意力，可以找位置之间不同种类的关系。"],
  },
  qk_norm: {
    part: "attention", formula: "q / rms(q) · γ,  k / rms(k) · γ",
    en: ["QK-norm", "Queries and keys are RMS-normalised within each head, so their dot products stay bounded and softmax cannot blow up, even at a large learning rate."],
    zh: ["QK-norm", "每个头里的查询和键各做 RMS 归一化，它们的点积因此有界，即使学习率很大，softmax 也不会爆掉。"],
  },
  rope: {
    part: "attention", formula: "(x₂ᵢ, x₂ᵢ₊₁) · R(θ(t, i))",
    en: ["RoPE: rotating q and k", "Each channel pair of q and k is rotated by its position's angle. After the rotation, the dot product of a query and a key depends only on how far apart their positions are."],
    zh: ["RoPE：旋转 q 和 k", "q 和 k 的每一对通道按所在位置的角度旋转。旋转之后，查询和键的点积只取决于两个位置相隔多远。"],
  },
  scores: {
    part: "attention", formula: "scores = q · kᵀ / √D",
    en: ["Attention scores", "Every query is compared with every key by a dot product, divided by √D (D = {D}) to keep the numbers in a range softmax handles well. Row = the position asking, column = the position it looks at."],
    zh: ["注意力得分", "每个查询和每个键做点积，再除以 √D（D = {D}），让数值保持在 softmax 好处理的范围。行是发问的位置，列是它看的位置。"],
  },
  mask: {
    part: "attention", formula: "scores[r, c] = −∞  (c > r)",
    en: ["Causal mask", "A position may not look at the future: every score above the diagonal becomes −∞, which softmax turns into 0. This is what makes the model predict the next token from the ones before it."],
    zh: ["因果掩码", "一个位置不能看未来：对角线以上的得分都设为 −∞，softmax 之后变成 0。正因如此，模型是根据前面的词元预测下一个词元。"],
  },
  weights: {
    part: "attention", formula: "w = softmax(scores),  Σⱼ wᵢⱼ = 1",
    en: ["Attention weights", "Softmax turns each row of scores into weights, positive and summing to 1: how much each position listens to itself and to each earlier position."],
    zh: ["注意力权重", "softmax 把每一行得分变成权重，都为正、和为 1：每个位置听自己和前面每个位置多少。"],
  },
  weighted: {
    part: "attention", formula: "y = w · v",
    en: ["Mixing the values", "Each position adds up the values v of the positions it attends to, weighted. This is the only place where information moves between positions."],
    zh: ["按权重混合值", "每个位置按权重把它注意到的各位置的值 v 加起来。信息只在这里在位置之间流动。"],
  },
  concat: {
    part: "attention", formula: "[y₁ … y_H]",
    en: ["Heads side by side", "The {H} heads' outputs are put side by side again, giving [T×C]."],
    zh: ["各头拼接", "把 {H} 个头的输出重新并排拼起来，得到 [T×C]。"],
  },
  attn_proj: {
    part: "attention", formula: "y · W_proj",
    en: ["Attention's output projection", "The matrix W_proj [C×C] mixes the heads into one vector per position, ready to be added to the residual stream."],
    zh: ["注意力的输出投影", "矩阵 W_proj [C×C] 把各头混合成每个位置一个向量，准备加回残差流。"],
  },
  cross: {
    part: "cross", formula: "softmax(q_target · k_sourceᵀ / √D) · v_source",
    en: ["Cross-attention", "In the encoder–decoder, the queries come from the decoder's target positions, the keys and values from the encoder's output: each target position reads the whole source."],
    zh: ["交叉注意力", "在编码器–解码器里，查询来自解码器的目标位置，键和值来自编码器的输出：每个目标位置都能读到整个源序列。"],
  },
  residual: {
    part: "add", formula: "x = x + f(norm(x))",
    en: ["Residual connection", "The sub-layer's output is added to the residual stream. Each block only adds a correction; in training the gradient flows straight back along these additions to the first layers."],
    zh: ["残差连接", "子层的输出加回残差流。每个块只添一点修正；训练时，梯度沿着这些加法直接流回最前面的层。"],
  },
  fc: {
    part: "mlp", formula: "h = x · W_fc",
    en: ["Feed-forward network: widen", "The MLP works on each position on its own. Its first matrix widens the {C} channels to {F}."],
    zh: ["前馈网络：加宽", "前馈网络（MLP）对每个位置单独计算。第一个矩阵把 {C} 个通道加宽到 {F} 个。"],
  },
  gelu: {
    part: "mlp", formula: "GELU(h) = h · Φ(h)",
    en: ["GELU", "The non-linearity: negative values are pushed toward 0, positive ones pass almost unchanged. Without it the two matrices of the network would amount to one."],
    zh: ["GELU", "非线性函数：负值被压向 0，正值几乎原样通过。没有它，前馈网络的两个矩阵就等于一个矩阵。"],
  },
  relu2: {
    part: "mlp", formula: "ReLU²(h) = max(0, h)²",
    en: ["ReLU²", "The modern variant's non-linearity: negative values become 0 and positive ones are squared. Simple, and most channels end up exactly 0."],
    zh: ["ReLU²", "现代变体的非线性函数：负值变成 0，正值取平方。简单，而且大多数通道恰好是 0。"],
  },
  swiglu_split: {
    part: "mlp", formula: "[gate value] = h",
    en: ["SwiGLU: gate and value", "The SwiGLU variant widens to twice {F} and cuts the result in two halves: a gate and a value."],
    zh: ["SwiGLU：门和值", "SwiGLU 变体加宽到 {F} 的两倍，再切成两半：门（gate）和值（value）。"],
  },
  swiglu: {
    part: "mlp", formula: "SiLU(gate) ⊙ value",
    en: ["SwiGLU", "The value is multiplied channel by channel by SiLU of the gate: the network learns which channels to let through at each position."],
    zh: ["SwiGLU", "值逐通道乘以门的 SiLU：网络由此学会在每个位置放行哪些通道。"],
  },
  mlp_proj: {
    part: "mlp", formula: "h · W_proj",
    en: ["Feed-forward network: back", "The second matrix brings the {F} channels back to {C}, ready to be added to the residual stream."],
    zh: ["前馈网络：投影回去", "第二个矩阵把 {F} 个通道投影回 {C} 个，准备加回残差流。"],
  },
  logits: {
    part: "head", formula: "logits = x · Wᵀ  [C×V]",
    en: ["Unembedding: logits", "Each position's final vector is multiplied by a [C×V] matrix (when tied, the token embedding's own), giving a score, a logit, to every one of the {V} tokens."],
    zh: ["反嵌入：logits", "每个位置最后的向量乘以一个 [C×V] 矩阵（共享时就是词元嵌入的矩阵），给 {V} 个词元各一个得分，即 logit。"],
  },
  softcap: {
    part: "head", formula: "cap · tanh(logits / cap)",
    en: ["Soft-cap", "The logits pass through cap · tanh(logit / cap): bounded, so no token can become overwhelmingly certain."],
    zh: ["软上限", "logits 经过 cap · tanh(logit / cap)：有界，没有哪个词元能变得压倒性地确定。"],
  },
  other: {
    part: "", formula: "",
    en: ["This stage", "A stage this walkthrough has no words for yet: its operation and numbers are on the right."],
    zh: ["这个阶段", "这个阶段还没有说明：它的运算和数值在右边。"],
  },
  softmax: {
    part: "softmax", formula: "p = e^logit / Σ e^logit",
    en: ["Softmax: the prediction", "The logits become probabilities, positive and summing to 1. The last row is the guess for the token after your prompt, the bars of the next-token view. In training, the loss is −log p of the true next token at every position (cross-entropy); backpropagation finds how every weight you have seen should move to raise p, and gradient descent moves them: see Train on this."],
    zh: ["softmax：预测", "logits 变成概率，都为正、和为 1。最后一行就是对提示之后那个词元的猜测，也就是“下一个词元”视图里的条形。训练时，损失是每个位置上真实下一个词元的 −log p（交叉熵）；反向传播求出你看到的每个权重该怎样动才能让 p 变大，梯度下降再去挪动它们：见“在这上面训练”。"],
  },
};

// Which concept a stage is, from its name (its module path and the module's own name for it) and op;
// "other" for a stage no text was written for (tests/test_page_texts.py keeps every model's stages covered).
function conceptOf(stage) {
  const parts = stage.name.split("."), last = parts[parts.length - 1];
  if (parts.includes("cross")) return "cross";
  if (last === "in_mean" || last === "in_std") return "ln_stats";
  if (last === "in_rms") return "rms_stats";
  if (last === "layernorm" || last === "rmsnorm") return last;
  if (parts.includes("attn")) {
    const named = { qkv: "qkv", q: "split", k: "split", v: "split", q_norm: "qk_norm", k_norm: "qk_norm",
      q_rope: "rope", k_rope: "rope", scores: "scores", scores_masked: "mask", weights: "weights",
      weighted: "weighted", heads: "concat", proj: "attn_proj" };
    return named[last] || "other";
  }
  if (parts.includes("mlp")) {
    const named = { fc: "fc", gelu: "gelu", gelu_tanh: "gelu", relu2: "relu2", gate: "swiglu_split",
      value: "swiglu_split", swiglu: "swiglu", proj: "mlp_proj" };
    return named[last] || "other";
  }
  if (last.startsWith("resid_")) return last === "resid_cross" ? "cross" : "residual";
  const named = { ids: "tokens", wte: "embedding", wpe: "position", wpe_source: "position", embed: "embed_sum",
    angles: "rope_angles", logits_raw: "logits", probs: "softmax" };
  if (last === "logits") return stage.op.includes("tanh") ? "softcap" : "logits";
  return named[last] || "other";
}

// The diagram's component a stage lights: the concept's part, refined inside a block (which norm, which
// residual connection) and after the blocks (the final norm).
function partOf(stage) {
  const concept = conceptOf(stage), part = CONCEPTS[concept].part, name = stage.name;
  if (part === "norm") {
    if (name.startsWith("ln_f.")) return "final_norm";
    if (name.includes(".ln_cross.")) return "cross";
    return name.includes(".ln_2.") ? "norm2" : "norm1";
  }
  if (part === "add") return name.endsWith("resid_mlp") ? "add2" : "add1";
  return part;
}

// "blocks.3.attn.q" -> ["block", 3]; encoder/decoder blocks likewise; null outside the blocks.
function blockOf(stage) {
  const m = stage.name.match(/^(blocks|encoder|decoder)\.(\d+)\./);
  return m ? [m[1] === "blocks" ? "block" : m[1], +m[2]] : null;
}

// What the model has, read from its stages: the diagram names the variant's own components.
function variantOf(stages) {
  const names = stages.map((s) => s.name.split(".").pop());
  const has = (n) => names.includes(n);
  return {
    layers: new Set(stages.map(blockOf).filter(Boolean).map(([, i]) => i)).size,
    rms: has("rmsnorm"), rope: has("angles") || has("q_rope"), qkNorm: has("q_norm"), position: has("wpe"),
    activation: has("swiglu") ? "SwiGLU" : has("relu2") ? "ReLU²" : "GELU", softcap: has("logits_raw"),
    cross: stages.some((s) => s.name.split(".").includes("cross")),
  };
}

function drawDiagram(data, index) {
  const v = variantOf(data.stages), stage = data.stages[index], lit = partOf(stage), block = blockOf(stage);
  const norm = v.rms ? "RMSNorm" : t("diagram.layernorm");
  const box = (part, label, note = "") => {
    const div = document.createElement("div");
    div.className = "part" + (part === lit ? " current" : "");
    div.dataset.part = part;
    div.textContent = label;
    if (note) {
      const small = document.createElement("small");
      small.textContent = note;
      div.appendChild(small);
    }
    return div;
  };
  const arrow = () => Object.assign(document.createElement("span"), { className: "arrow", textContent: "→" });
  const inner = [
    box("norm1", norm), box("attention", t("diagram.attention"), [v.rope && "RoPE", v.qkNorm && "QK-norm"].filter(Boolean).join(" · ")),
    box("add1", t("diagram.add")),
  ];
  if (v.cross) inner.push(box("cross", t("diagram.cross")));
  inner.push(box("norm2", norm), box("mlp", t("diagram.mlp"), v.activation), box("add2", t("diagram.add")));
  const blocks = document.createElement("div");
  blocks.className = "blocks" + (block ? " current" : "");
  const title = document.createElement("div");
  title.className = "blocks-title";
  title.textContent = block ? `${t("diagram.block_now", { i: block[1] + 1, n: v.layers })}` : t("diagram.blocks", { n: v.layers });
  const row = document.createElement("div");
  row.className = "blocks-row";
  inner.forEach((el, i) => row.append(...(i ? [arrow(), el] : [el])));
  blocks.append(title, row);
  const path = [
    box("tokens", t("diagram.tokens")),
    box("embedding", v.position ? t("diagram.embedding_pos") : t("diagram.embedding"), v.rope ? "RoPE" : ""),
    blocks, box("final_norm", t("diagram.final_norm"), norm),
    box("head", t("diagram.head"), v.softcap ? "soft-cap" : ""), box("softmax", t("diagram.softmax")),
  ];
  const diagram = $("diagram");
  diagram.replaceChildren();
  path.forEach((el, i) => diagram.append(...(i ? [arrow(), el] : [el])));
  diagram.dataset.part = lit;
}

// The model's description of a stage's operation (English words, e.g. "softmax over each row (the keys)"),
// or on the Chinese page, where it has English words, the concept's formula in its place.
function opText(stage) {
  const words = stage.op.replace(/\b(softmax|tanh)\b/g, "").match(/\b[a-z]{3,}\b/);
  return i18n.lang === "en" || !words ? stage.op : CONCEPTS[conceptOf(stage)].formula;
}

const fmt4 = (x) => (x === null || x === undefined ? "—" : Number.isInteger(x) ? String(x) : Number(x).toPrecision(4));

// The walkthrough's text for the current stage: where it is, what it computes, its formula, and the live
// shapes and numbers of this model on this prompt.
function drawWalk(data, index, sizes) {
  const stage = data.stages[index], view = data.stage, concept = conceptOf(stage), c = CONCEPTS[concept];
  const [title, text] = c[i18n.lang] || c.en;
  const dims = { ...data.dims };
  const fill = (s) => s.replace(/\{(\w)\}/g, (whole, k) => (k in dims ? String(dims[k]) : whole));
  const block = blockOf(stage), n = data.stages.length, L = variantOf(data.stages).layers;
  const firstBlock = data.stages.findIndex((s) => blockOf(s) !== null);
  const where = block ? t(`walk.where.${block[0]}`, { i: index + 1, n, b: block[1] + 1, L }) :
    t(index < firstBlock ? "walk.where.before" : "walk.where.after", { i: index + 1, n });
  $("walk").dataset.concept = concept;
  $("walk").dataset.index = index;
  $("walk-where").textContent = where;
  $("walk-title").textContent = title;
  $("walk-text").textContent = fill(text);
  $("walk-formula").textContent = c.formula;
  const live = [t("walk.live", sizes)];
  const piece = (p) => visible(data.tokens[p].piece);
  const last = view.rows.length - 1, p = view.rows[last];
  if (concept === "softmax" || concept === "logits" || concept === "softcap") {
    const best = data.top[0];
    live.push(t("walk.predicts", { piece: visible(best.piece), pct: (100 * best.prob).toFixed(2) }));
  } else if (view.kind === "attention" && concept === "weights") {
    const row = view.values[last];
    const q = row.reduce((best, w, i) => (w !== null && w > (row[best] ?? -1) ? i : best), 0);
    live.push(t("walk.attends", { p, piece: piece(p), q: view.columns[q].label, qpiece: piece(+view.columns[q].label), w: fmt4(row[q]) }));
  } else if (view.columns.length === 1) {
    const values = view.rows.slice(0, 8).map((r, i) => `${piece(r)} ${fmt4(view.values[i][0])}`);
    live.push(t("walk.values_col", { values: values.join(", ") + (view.rows.length > 8 ? ", …" : "") }));
  } else {
    const values = view.values[last].slice(0, 6).map(fmt4).join(", ");
    live.push(t("walk.values_row", { p, piece: piece(p), values: values + (view.values[last].length > 6 ? ", …" : "") }));
  }
  $("walk-live").replaceChildren(...live.map((line) => Object.assign(document.createElement("span"), { textContent: line })));
}
