// vivit-lens report views: a frame scrubber with overlays, the per-head patching map, the path graph (analysis),
// and the per-pair explorer behind each CI (study). Plain JavaScript, no library; data from #vl-data.
// Opened as report.html#selftest, it exercises every view and writes the results into <pre id="vl-selftest">.
"use strict";
(function () {
  const errors = [];
  window.addEventListener("error", (e) => errors.push(String(e.message || e)));
  const consoleError = console.error;
  console.error = function (...args) { errors.push(args.map(String).join(" ")); consoleError.apply(console, args); };

  const D = JSON.parse(document.getElementById("vl-data").textContent);
  const READOUT = D.readout || "[CLS]";  // the attention row shown: [CLS], or a mean-pooling model's token mean
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const fmt = (v, d = 3) => (v === null || v === undefined || !isFinite(v)) ? "n/a" :
    (Math.abs(v) < 5e-324 ? "0" : Number(v).toPrecision(d).replace(/^-(0\.?0*)$/, "$1"));

  function svgEl(name, attrs, parent) {
    const el = document.createElementNS(SVG, name);
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(el);
    return el;
  }
  function rgb(c) { return `rgb(${c[0]},${c[1]},${c[2]})`; }
  // colour of v in [lo, hi] (sequential) or in [-m, m] centred at 0 (diverging)
  function seqColor(v, hi) { const l = D.cmaps.seq; return l[Math.max(0, Math.min(l.length - 1, Math.round(v / (hi || 1) * (l.length - 1))))]; }
  function divColor(v, m) { const l = D.cmaps.div; const x = 0.5 + 0.5 * v / (m || 1); return l[Math.max(0, Math.min(l.length - 1, Math.round(x * (l.length - 1))))]; }
  function absMax(a) { let m = 0; for (const v of a.flat(4)) if (v !== null && isFinite(v)) m = Math.max(m, Math.abs(v)); return m || 1; }
  function option(sel, value, text) { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); }
  function fire(el, type) { el.dispatchEvent(new Event(type, { bubbles: true })); }
  function canvasHash(c) {
    const d = c.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261;
    for (let i = 0; i < d.length; i += 7) h = Math.imul(h ^ d[i], 16777619) >>> 0;
    return h;
  }

  // uint8 maps with one scale per map (see interactive.quantized)
  function decode(q) {
    const bin = atob(q.data); const codes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) codes[i] = bin.charCodeAt(i);
    return { codes, shape: q.shape, scale: q.scale.flat() };
  }

  // Analysis ---------------------------------------------------------------------------------------
  function analysisViews() {
    const [T, Hg, Wg] = D.grid, [tt, ph, pw] = D.tubelet, [H, W] = D.image;
    const images = {};
    for (const k of ["clean", "corrupt"]) images[k] = Array.from(document.querySelectorAll(`#vl-frames img[data-clip="${k}"]`));
    const nFrames = images.clean.length, L = D.n_layers, NH = D.n_heads;
    const att = { clean: decode(D.attention.clean), corrupt: decode(D.attention.corrupt) };
    const delta = decode(D.delta);
    const per = T * Hg * Wg;
    const scale = Math.max(1, Math.ceil(300 / W));
    const state = { frame: Math.min(nFrames - 1, D.region.frames[0]), overlay: "attention", layer: L - 1, head: 0, alpha: 0.65 };
    if (D.heads) { // start on the strongest head
      let best = -Infinity;
      D.heads.forEach((row, l) => row.forEach((v, h) => { if (v !== null && Math.abs(v) > best) { best = Math.abs(v); state.layer = l; state.head = h; } }));
    }

    // values of the selected overlay for clip k, tubelet time t: {vals[row][col], kind, max}
    function overlay(k, t, o = state) {
      const vals = [];
      if (o.overlay === "attention") {
        const q = att[k], m = o.layer * NH + o.head, s = q.scale[m] / 255, base = m * per + t * Hg * Wg;
        for (let r = 0; r < Hg; r++) { vals.push([]); for (let c = 0; c < Wg; c++) vals[r].push(q.codes[base + r * Wg + c] * s); }
        return { vals, kind: "seq", max: q.scale[m], label: `${READOUT} attention weight, L${o.layer}H${o.head} (0 to ${fmt(q.scale[m])})` };
      }
      if (o.overlay === "delta") {
        const s = delta.scale[o.layer] / 255, base = o.layer * per + t * Hg * Wg;
        for (let r = 0; r < Hg; r++) { vals.push([]); for (let c = 0; c < Wg; c++) vals[r].push(delta.codes[base + r * Wg + c] * s); }
        return { vals, kind: "seq", max: delta.scale[o.layer], label: `||resid_clean - resid_corrupt|| after block ${o.layer} (0 to ${fmt(delta.scale[o.layer])})` };
      }
      if (o.overlay === "dla" && D.dla) {
        const m = absMax([D.dla.clean, D.dla.corrupt]);
        return { vals: D.dla[k][t], kind: "div", max: m, label: `DLA to '${D.label}' per token (logits, -${fmt(m)} to ${fmt(m)}, 0 = white)` };
      }
      return null;
    }

    function drawClip(canvas, k, f, o, s) {
      canvas.width = W * s; canvas.height = H * s;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.imageSmoothingEnabled = false;
      const im = images[k][f];
      if (im.complete && im.naturalWidth) ctx.drawImage(im, 0, 0, W * s, H * s);
      const t = Math.min(T - 1, Math.floor(f / tt));
      const ov = overlay(k, t, o);
      if (ov) {
        ctx.globalAlpha = o.alpha;
        for (let r = 0; r < Hg; r++) for (let c = 0; c < Wg; c++) {
          const v = ov.vals[r][c];
          if (v === null) continue;
          ctx.fillStyle = rgb(ov.kind === "seq" ? seqColor(v, ov.max) : divColor(v, ov.max));
          ctx.fillRect(c * pw * s, r * ph * s, pw * s, ph * s);
        }
        ctx.globalAlpha = 1;
      }
      const [a, b] = D.region.frames, [x0, y0, x1, y1] = D.region.box;
      if (f >= a && f < b) { ctx.strokeStyle = "cyan"; ctx.lineWidth = Math.max(1, s / 2); ctx.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s); }
      return ov;
    }

    function drawColorbar(ov) {
      const cb = $("vl-colorbar"), ctx = cb.getContext("2d", { willReadFrequently: true });
      ctx.clearRect(0, 0, cb.width, cb.height);
      if (!ov) { $("vl-cbar-label").textContent = "no overlay"; return; }
      for (let x = 0; x < cb.width; x++) {
        const u = x / (cb.width - 1);
        ctx.fillStyle = rgb(ov.kind === "seq" ? seqColor(u * ov.max, ov.max) : divColor((2 * u - 1) * ov.max, ov.max));
        ctx.fillRect(x, 0, 1, cb.height);
      }
      $("vl-cbar-label").textContent = ov.label;
    }

    function drawScrubber() {
      let ov = null;
      for (const k of ["clean", "corrupt"]) ov = drawClip($("vl-canvas-" + k), k, state.frame, state, scale) || ov;
      drawColorbar(ov);
      const t = Math.floor(state.frame / tt);
      $("vl-frame-label").textContent = `input frame ${state.frame} of ${nFrames} (tubelet time ${t}: frames ${t * tt}-${t * tt + tt - 1})`;
      $("vl-head-box").style.display = state.overlay === "attention" ? "" : "none";
      $("vl-layer").disabled = state.overlay === "dla" || state.overlay === "none";
    }

    function hover(k) {
      return (e) => {
        const c = e.target, rect = c.getBoundingClientRect();
        const x = (e.clientX - rect.left) / rect.width * W, y = (e.clientY - rect.top) / rect.height * H;
        const r = Math.min(Hg - 1, Math.floor(y / ph)), col = Math.min(Wg - 1, Math.floor(x / pw)), t = Math.floor(state.frame / tt);
        const ov = overlay(k, t);
        $("vl-readout").textContent = `${k}, token (t ${t}, row ${r}, col ${col}): ` + (ov ? fmt(ov.vals[r][col], 4) : "no overlay");
      };
    }

    // the scrubber's controls
    const fr = $("vl-frame"); fr.max = nFrames - 1; fr.value = state.frame;
    fr.addEventListener("input", () => { state.frame = +fr.value; drawScrubber(); });
    for (let l = 0; l < L; l++) option($("vl-layer"), l, l);
    for (let h = 0; h < NH; h++) option($("vl-head"), h, h);
    $("vl-layer").value = state.layer; $("vl-head").value = state.head;
    $("vl-layer").addEventListener("change", () => { state.layer = +$("vl-layer").value; drawScrubber(); });
    $("vl-head").addEventListener("change", () => { state.head = +$("vl-head").value; selectHead(state.layer, state.head); });
    $("vl-overlay").addEventListener("change", () => { state.overlay = $("vl-overlay").value; drawScrubber(); });
    $("vl-alpha").addEventListener("input", () => { state.alpha = $("vl-alpha").value / 100; drawScrubber(); });
    for (const k of ["clean", "corrupt"]) $("vl-canvas-" + k).addEventListener("mousemove", hover(k));
    let timer = null;
    $("vl-play").addEventListener("click", () => {
      if (timer) { clearInterval(timer); timer = null; $("vl-play").textContent = "play"; return; }
      $("vl-play").textContent = "pause";
      timer = setInterval(() => { state.frame = (state.frame + 1) % nFrames; fr.value = state.frame; drawScrubber(); }, 250);
    });

    // the selected head's readout attention on the middle frame of every tubelet (clean clip)
    function drawHeadFrames() {
      const box = $("vl-head-frames"); box.textContent = "";
      const o = { ...state, overlay: "attention" };
      const s = Math.max(1, Math.ceil(96 / W));
      for (let t = 0; t < T; t++) {
        const c = document.createElement("canvas"); c.title = `tubelet time ${t}`;
        drawClip(c, "clean", Math.min(nFrames - 1, t * tt + Math.floor(tt / 2)), o, s);
        box.appendChild(c);
      }
      const q = att.clean, m = state.layer * NH + state.head;
      $("vl-head-title").textContent = `L${state.layer}H${state.head}: ${READOUT} attention on the clean clip, one frame per tubelet time (colour 0 to ${fmt(q.scale[m])}; cyan: outcome region)`;
    }

    function selectHead(l, h) {
      state.layer = l; state.head = h; state.overlay = "attention";
      $("vl-layer").value = l; $("vl-head").value = h; $("vl-overlay").value = "attention";
      document.querySelectorAll("#vl-headmap rect.vl-hit").forEach((r) => r.setAttribute("stroke", (+r.dataset.l === l && +r.dataset.h === h) ? "black" : "none"));
      drawScrubber(); drawHeadFrames();
    }

    // the per-head patching map
    function drawHeadMap() {
      const svg = $("vl-headmap"), cell = 46, left = 44, top = 30;
      if (!D.heads) { $("vl-heads").style.display = "none"; return; }
      const m = absMax(D.heads);
      svg.setAttribute("width", left + NH * cell + 10); svg.setAttribute("height", top + L * cell + 24);
      svgEl("text", { x: left + NH * cell / 2, y: 10, "text-anchor": "middle", "font-size": 12 }, svg).textContent = "head";
      for (let h = 0; h < NH; h++) svgEl("text", { x: left + h * cell + cell / 2, y: top - 4, "text-anchor": "middle", "font-size": 11 }, svg).textContent = h;
      for (let l = 0; l < L; l++) {
        svgEl("text", { x: left - 6, y: top + l * cell + cell / 2 + 4, "text-anchor": "end", "font-size": 11 }, svg).textContent = "L" + l;
        for (let h = 0; h < NH; h++) {
          const v = D.heads[l] ? D.heads[l][h] : null;
          const col = v === null || v === undefined ? [235, 235, 235] : divColor(v, m);
          const r = svgEl("rect", { x: left + h * cell, y: top + l * cell, width: cell - 2, height: cell - 2, fill: rgb(col), stroke: "none", "stroke-width": 2.5, class: "vl-hit" }, svg);
          r.dataset.l = l; r.dataset.h = h;
          const lum = 0.299 * col[0] + 0.587 * col[1] + 0.114 * col[2];
          const txt = svgEl("text", { x: left + h * cell + cell / 2 - 1, y: top + l * cell + cell / 2 + 4, "text-anchor": "middle", "font-size": 12, fill: lum < 120 ? "white" : "black", "pointer-events": "none" }, svg);
          txt.textContent = v === null || v === undefined ? "" : fmt(v, 2);
          svgEl("title", {}, r).textContent = `L${l}H${h}: ${fmt(v, 4)}% recovery`;
          r.addEventListener("mouseover", () => { $("vl-head-readout").textContent = `L${l}H${h}: ${fmt(v, 4)}% of the signal recovered when its output is patched`; });
          r.addEventListener("click", () => selectHead(l, h));
        }
      }
      svgEl("text", { x: left, y: top + L * cell + 16, "font-size": 11, fill: "#555" }, svg).textContent = `recovery (%), colour -${fmt(m, 2)} to ${fmt(m, 2)}, 0 = white`;
    }

    // the path graph: heads and MLPs by layer, the strongest paths as edges
    function drawGraph() {
      const svg = $("vl-pathgraph"); svg.textContent = "";
      if (!D.paths) { $("vl-graph").style.display = "none"; return; }
      const k = Math.max(1, +$("vl-graph-k").value || 16);
      const edges = [];
      for (const e of D.paths.into) e.heads.forEach((row, l) => row.forEach((v, h) => { if (v !== null && l <= e.mlp) edges.push({ from: `L${l}H${h}`, to: `MLP${e.mlp}`, v, what: `path L${l}H${h} -> MLP ${e.mlp} input` }); }));
      if (D.paths.direct) {
        D.paths.direct.heads.forEach((row, l) => row.forEach((v, h) => { if (v !== null) edges.push({ from: `L${l}H${h}`, to: "final", v, what: `direct path L${l}H${h} -> ${D.paths.direct.receiver}` }); }));
        D.paths.direct.mlps.forEach((v, l) => { if (v !== null) edges.push({ from: `MLP${l}`, to: "final", v, what: `direct path MLP ${l} -> ${D.paths.direct.receiver}` }); });
      }
      edges.sort((a, b) => Math.abs(b.v) - Math.abs(a.v));
      const shown = edges.slice(0, k), m = Math.max(1e-9, ...shown.map((e) => Math.abs(e.v)));
      const colW = 92, rowH = 30, left = 40, top = 30, width = left + (L + 1) * colW + 60, height = top + (NH + 1) * rowH + 40;
      svg.setAttribute("width", width); svg.setAttribute("height", height);
      const pos = (id) => {
        if (id === "final") return [left + L * colW + 30, top + (NH + 1) * rowH / 2];
        if (id.startsWith("MLP")) return [left + (+id.slice(3)) * colW + colW / 2, top + NH * rowH + rowH / 2];
        const [l, h] = id.slice(1).split("H").map(Number); return [left + l * colW + colW / 4, top + h * rowH + rowH / 2];
      };
      for (let l = 0; l < L; l++) svgEl("text", { x: left + l * colW + colW / 2, y: 16, "text-anchor": "middle", "font-size": 12 }, svg).textContent = `layer ${l}`;
      const used = new Set(["final"]);
      for (const e of shown) {
        used.add(e.from); used.add(e.to);
        const [x1, y1] = pos(e.from), [x2, y2] = pos(e.to);
        const line = svgEl("path", { d: `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`, fill: "none", stroke: e.v > 0 ? "#b2182b" : "#2166ac", "stroke-width": 1 + 7 * Math.abs(e.v) / m, opacity: 0.3 + 0.6 * Math.abs(e.v) / m, class: "vl-hit" }, svg);
        svgEl("title", {}, line).textContent = `${e.what}: ${fmt(e.v, 4)}%`;
        line.addEventListener("mouseover", () => { $("vl-graph-readout").textContent = `${e.what}: ${fmt(e.v, 4)}% of the signal`; });
      }
      const direct = (id) => {
        if (!D.paths.direct || id === "final") return null;
        if (id.startsWith("MLP")) return D.paths.direct.mlps[+id.slice(3)];
        const [l, h] = id.slice(1).split("H").map(Number); return D.paths.direct.heads[l][h];
      };
      for (const id of used) {
        const [x, y] = pos(id), isHead = id.startsWith("L");
        const node = svgEl(isHead ? "circle" : "rect", isHead ? { cx: x, cy: y, r: 9 } : { x: x - 22, y: y - 10, width: 44, height: 20, rx: 4 }, svg);
        node.setAttribute("fill", id === "final" ? "#ddd" : isHead ? "#fdb863" : "#92c5de"); node.setAttribute("stroke", "#333"); node.setAttribute("class", "vl-hit");
        node.dataset.node = id;
        svgEl("text", { x: isHead ? x + 12 : x, y: y + 4, "font-size": 11, "text-anchor": isHead ? "start" : "middle", "pointer-events": "none" }, svg).textContent = id === "final" ? "final" : id;
        const d = direct(id), rec = isHead && D.heads ? D.heads[+id.slice(1).split("H")[0]][+id.split("H")[1]] : null;
        const text = id === "final" ? `${D.paths.direct ? D.paths.direct.receiver : "final residual"}; embeddings direct ${fmt(D.paths.direct && D.paths.direct.embed, 4)}%` :
          `${id}: direct effect on the final residual ${fmt(d, 4)}%` + (rec !== null ? `, patching recovery ${fmt(rec, 4)}%` : "");
        svgEl("title", {}, node).textContent = text;
        node.addEventListener("mouseover", () => { $("vl-graph-readout").textContent = text; });
        if (isHead) node.addEventListener("click", () => { const [l, h] = id.slice(1).split("H").map(Number); selectHead(l, h); });
      }
      svgEl("text", { x: left, y: height - 8, "font-size": 11, fill: "#555" }, svg).textContent = `the ${shown.length} strongest of ${edges.length} paths; width and colour: effect (% of signal; red +, blue -); paths a head cannot reach are not drawn`;
    }

    $("vl-graph-k").addEventListener("change", drawGraph);
    drawHeadMap(); drawGraph();
    const start = () => selectHead(state.layer, state.head);
    return { start, state, drawScrubber, selectHead, nFrames };
  }

  // Study ------------------------------------------------------------------------------------------
  function studyViews() {
    const st = { domain: null, quantity: null, layer: 0, head: 0, selected: null };
    const doms = Object.keys(D.domains);
    doms.forEach((d) => option($("vl-x-domain"), d, d));
    function q() { return D.domains[st.domain].quantities[st.quantity]; }
    function index(arr) { // one value per pair, or the mean/lo/hi, at the selected layer / head
      const a = q().axes;
      return a === "" ? arr : a === "layer" ? arr[st.layer] : arr[st.layer][st.head];
    }
    function fillQuantities() {
      const sel = $("vl-x-quantity"); const keep = st.quantity; sel.textContent = "";
      for (const [k, v] of Object.entries(D.domains[st.domain].quantities)) option(sel, k, v.label);
      st.quantity = keep && D.domains[st.domain].quantities[keep] ? keep : sel.options[0].value; sel.value = st.quantity;
      fillAxes();
    }
    function fillAxes() {
      const v = q(), first = v.values[0], a = v.axes;
      const nl = a === "" ? 0 : first.length, nh = a === "layer head" ? first[0].length : 0;
      $("vl-x-layer").textContent = ""; $("vl-x-head").textContent = "";
      for (let l = 0; l < nl; l++) option($("vl-x-layer"), l, l);
      for (let h = 0; h < nh; h++) option($("vl-x-head"), h, h);
      st.layer = Math.min(st.layer, Math.max(0, nl - 1)); st.head = Math.min(st.head, Math.max(0, nh - 1));
      $("vl-x-layer").value = st.layer; $("vl-x-head").value = st.head;
      $("vl-x-layer-box").style.display = nl ? "" : "none"; $("vl-x-head-box").style.display = nh ? "" : "none";
      draw();
    }
    function draw() {
      const v = q(), pairs = D.domains[st.domain].pairs;
      const vals = v.values.map(index), mean = index(v.mean), lo = index(v.lo), hi = index(v.hi);
      const finite = vals.filter((x) => x !== null);
      const mn = Math.min(lo, ...finite, 0), mx = Math.max(hi, ...finite, 0), pad = (mx - mn) * 0.06 || 1;
      const svg = $("vl-x-strip"); svg.textContent = "";
      const w = 560, h = 120, left = 20, right = 20, X = (x) => left + (x - (mn - pad)) / (mx - mn + 2 * pad) * (w - left - right);
      svg.setAttribute("width", w); svg.setAttribute("height", h);
      svgEl("rect", { x: X(lo), y: 20, width: Math.max(1, X(hi) - X(lo)), height: 60, fill: "#c6dbef" }, svg);
      svgEl("line", { x1: X(mean), x2: X(mean), y1: 16, y2: 84, stroke: "#08519c", "stroke-width": 2 }, svg);
      svgEl("line", { x1: X(0), x2: X(0), y1: 10, y2: 90, stroke: "#999", "stroke-dasharray": "3,3" }, svg);
      vals.forEach((x, i) => {
        if (x === null) return;
        const dot = svgEl("circle", { cx: X(x), cy: 30 + (i * 37 % 41), r: st.selected === i ? 6 : 3.5, fill: st.selected === i ? "#e6550d" : "#333", opacity: 0.8, class: "vl-hit" }, svg);
        dot.dataset.pair = i;
        svgEl("title", {}, dot).textContent = `${pairs[i]}: ${fmt(x, 4)}`;
        dot.addEventListener("click", () => select(i));
      });
      for (const t of [mn, mean, mx]) svgEl("text", { x: X(t), y: 106, "text-anchor": "middle", "font-size": 11 }, svg).textContent = fmt(t, 3);
      const where = v.axes === "" ? "" : v.axes === "layer" ? ` at layer ${st.layer}` : ` of L${st.layer}H${st.head}`;
      $("vl-x-readout").textContent = `${st.domain}: ${v.label}${where}: mean ${fmt(mean, 4)} [${fmt(lo, 4)}, ${fmt(hi, 4)}] over ${finite.length} pairs (band: 95% bootstrap CI; dots: pairs)` +
        (st.selected !== null ? `; selected ${pairs[st.selected]}: ${fmt(vals[st.selected], 4)}` : "");
      const order = vals.map((x, i) => i).sort((a, b) => (vals[b] ?? -Infinity) - (vals[a] ?? -Infinity));
      const tbl = $("vl-x-table"); tbl.textContent = "";
      const head = tbl.insertRow(); for (const t of ["rank", "pair", "value"]) { const c = document.createElement("th"); c.textContent = t; head.appendChild(c); }
      order.forEach((i, r) => {
        const row = tbl.insertRow(); row.dataset.pair = i; if (st.selected === i) row.className = "sel";
        for (const t of [r + 1, pairs[i], fmt(vals[i], 4)]) row.insertCell().textContent = t;
        row.addEventListener("click", () => select(i));
      });
    }
    function select(i) { st.selected = st.selected === i ? null : i; draw(); }
    $("vl-x-domain").addEventListener("change", () => { st.domain = $("vl-x-domain").value; st.selected = null; fillQuantities(); });
    $("vl-x-quantity").addEventListener("change", () => { st.quantity = $("vl-x-quantity").value; fillAxes(); });
    $("vl-x-layer").addEventListener("change", () => { st.layer = +$("vl-x-layer").value; draw(); });
    $("vl-x-head").addEventListener("change", () => { st.head = +$("vl-x-head").value; draw(); });
    st.domain = doms[0];
    // a CI cell of the tables (data-ci="domain|quantity|layer|head") opens its pairs in the explorer
    document.querySelectorAll("[data-ci]").forEach((cell) => {
      cell.classList.add("vl-ci");
      cell.title = "click: the pairs behind this CI, in the explorer above";
      cell.addEventListener("click", () => {
        const [d, k, l, h] = cell.dataset.ci.split("|");
        st.domain = d; $("vl-x-domain").value = d; st.quantity = k; st.layer = +l || 0; st.head = +h || 0; st.selected = null;
        fillQuantities(); $("vl-explorer").scrollIntoView({ block: "nearest" });
      });
    });
    return { start: fillQuantities, st, select };
  }

  // Self-test (report.html#selftest): every view is driven and checked; results go into the DOM ---------------
  function selftest(v) {
    const r = { errors, checks: {} };
    const ok = (name, cond, detail) => { r.checks[name] = { ok: !!cond, detail: detail === undefined ? "" : String(detail) }; };
    ok("sections", D.sections.every((s) => $(s)), D.sections.filter((s) => !$(s)).join(","));
    const imgs = Array.from(document.images);
    ok("images", imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0), `${imgs.filter((i) => !(i.naturalWidth > 0)).length} of ${imgs.length} not decoded`);
    if (D.kind === "analysis") {
      const c = $("vl-canvas-clean"), fr = $("vl-frame");
      const h0 = canvasHash(c);
      fr.value = (v.state.frame + Math.max(1, Math.floor(v.nFrames / 2))) % v.nFrames; fire(fr, "input");
      const h1 = canvasHash(c);
      ok("scrubber_changes_overlay", h0 !== h1, `${h0} -> ${h1}`);
      const seen = new Set([canvasHash(c)]);
      for (const o of ["dla", "delta", "none"]) { $("vl-overlay").value = o; fire($("vl-overlay"), "change"); seen.add(canvasHash(c)); }
      ok("overlay_kinds_differ", seen.size === 4, seen.size);
      const hf = () => Array.from(document.querySelectorAll("#vl-head-frames canvas")).map(canvasHash).join(",");
      const cells = document.querySelectorAll("#vl-headmap rect.vl-hit");
      const a0 = hf(), t0 = $("vl-head-title").textContent;
      const other = Array.from(cells).find((x) => +x.dataset.l !== v.state.layer || +x.dataset.h !== v.state.head);
      other.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
      const readout = $("vl-head-readout").textContent;
      other.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      ok("head_click_changes_attention", hf() !== a0 && $("vl-head-title").textContent !== t0 && $("vl-overlay").value === "attention", $("vl-head-title").textContent);
      ok("head_hover_value", /recovered/.test(readout), readout);
      const node = document.querySelector("#vl-pathgraph circle.vl-hit");
      if (node) {
        node.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
        const g = $("vl-graph-readout").textContent, a1 = hf();
        node.dispatchEvent(new MouseEvent("click", { bubbles: true }));
        ok("graph_hover_value", /direct effect/.test(g), g);
        ok("graph_click_head", node.dataset.node === `L${v.state.layer}H${v.state.head}`, `${node.dataset.node} ${a1 === hf() ? "(same head)" : ""}`);
      } else ok("graph_hover_value", !D.paths, "no head node in the path graph");
    } else {
      const rows = () => document.querySelectorAll("#vl-x-table tr[data-pair]");
      const d0 = $("vl-x-readout").textContent;
      rows()[0].dispatchEvent(new MouseEvent("click", { bubbles: true }));
      ok("pair_select", document.querySelectorAll("#vl-x-table tr.sel").length === 1 && /selected/.test($("vl-x-readout").textContent), $("vl-x-readout").textContent);
      const qs = $("vl-x-quantity"); qs.value = qs.options[qs.options.length - 1].value; fire(qs, "change");
      ok("quantity_change", $("vl-x-readout").textContent !== d0, $("vl-x-readout").textContent);
      const ci = document.querySelector("[data-ci]");
      if (ci) { ci.dispatchEvent(new MouseEvent("click", { bubbles: true })); ok("ci_cell_opens_pairs", $("vl-x-quantity").value === ci.dataset.ci.split("|")[1], ci.dataset.ci); }
      ok("pair_rows", rows().length > 0, rows().length);
    }
    ok("no_errors", errors.length === 0, errors.join(" | "));
    // where each section and view sits on the page (for screenshots of one view)
    const box = (el) => { const b = el.getBoundingClientRect(); return [Math.round(b.top + window.scrollY), Math.round(b.height)]; };
    r.layout = { page: document.documentElement.scrollHeight, width: document.documentElement.scrollWidth, at: {} };
    document.querySelectorAll("section[id], .vl-view[id]").forEach((el) => { r.layout.at[el.id] = box(el); });
    const pre = document.createElement("pre"); pre.id = "vl-selftest"; pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
  }

  function main() {
    const v = D.kind === "analysis" ? analysisViews() : studyViews();
    v.start();
    if (location.hash === "#selftest") selftest(v);
  }
  if (document.readyState === "complete") main(); else window.addEventListener("load", main);
})();
