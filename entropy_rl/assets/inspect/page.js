// entropy-rl inspect: the token browser. Data: the JSON of entropy_rl.inspect.runs.page_data.
// Filters select response indices; only the current page (pageSize responses) is rendered.
(function () {
  "use strict";
  const start = performance.now();
  const data = JSON.parse(document.getElementById("inspect-data").textContent);
  const kinds = data.kinds;
  const responses = data.responses.map((values) => {  // RESPONSE_FIELDS of entropy_rl/inspect/runs.py
    const r = {};
    data.fields.forEach((field, i) => { r[field] = values[i]; });
    return r;
  });
  const H_EDGES = [0.1, 0.5, 1, 2];     // entropy classes h0..h4, nats
  const P_EDGES = [0.1, 0.3, 0.6, 0.9]; // probability classes p0..p4
  const OUTLINED = new Set(["silenced", "penalised", "kept", "dropped"]);
  const state = { run: -1, stepMin: null, stepMax: null, correct: "all", flagged: false, search: "",
                  page: 0, pageSize: 50, colour: "entropy",
                  preview: 500 };  // tokens shown of a longer response until asked: a page stays fast to render
  const $ = (id) => document.getElementById(id);
  const box = $("responses"), tip = $("tip");
  let matches = [], lowerText = null;

  const bin = (value, edges) => { let i = 0; while (i < edges.length && value >= edges[i]) i++; return i; };
  const esc = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const fmt = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

  function visible(piece) {  // whitespace shown: · space, → tab, ↵ newline (then a line break)
    return esc(piece).replace(/ /g, '<span class="ws">·</span>').replace(/\t/g, '<span class="ws">→</span>')
      .replace(/\n/g, '<span class="ws">↵</span><br>');
  }

  function tokenClasses(r, i) {
    const h = r.h[i] / 1000, p = Math.exp(r.lp[i] / 1000), kind = kinds[r.kind.charCodeAt(i) - 48];
    return "t h" + bin(h, H_EDGES) + " p" + bin(p, P_EDGES) + (OUTLINED.has(kind) ? " k-" + kind : "");
  }

  function tokensHtml(r, from, to) {  // the spans of tokens [from, to)
    const out = [];
    const special = new Set(r.special);
    for (let i = from; i < to; i++) {
      let cls = tokenClasses(r, i), text;
      if (r.pieces === null) { cls += " cell"; text = ""; }
      else if (special.has(i)) { cls += " sp"; text = esc(r.pieces[i]); }
      else if (r.pieces[i] === "") { cls += " part"; text = "◌"; }
      else text = visible(r.pieces[i]);
      out.push('<span class="' + cls + '" data-i="' + i + '">' + text + "</span>");
    }
    return out.join("");
  }

  function responseHtml(index) {
    const r = responses[index], run = data.runs[r.run];
    const verdict = r.correct === null || r.correct === undefined ? "" : r.correct > 0 ? "correct" : "wrong";
    const meta = [
      data.runs.length > 1 ? "<b>" + esc(run.label) + "</b>" : "",
      "step <b>" + r.step + "</b>", "row " + r.row, "<b>" + (verdict || "unverified") + "</b>",
      "reward <b>" + fmt(r.reward, 3) + "</b>", "advantage <b>" + fmt(r.advantage, 3) + "</b>",
      "answer <b>" + esc(String(r.answer)) + "</b>", "reference <b>" + esc(r.reference === undefined || r.reference === null ? "–" : String(r.reference)) + "</b>",
      r.lp.length + " tokens", "<b>" + r.flagged + "</b> flagged" + (run.flag ? " (" + esc(run.flag) + ")" : ""),
    ].filter(Boolean).map((m) => "<span>" + m + "</span>").join("");
    const prompt = '<details class="prompt"><summary>prompt</summary><pre>' + esc(data.prompts[r.prompt]) + "</pre></details>";
    const text = r.pieces === null ? '<pre class="text">' + esc(r.text) + "</pre>" : "";
    return '<div class="response ' + verdict + '" data-r="' + index + '"><div class="meta">' + meta + "</div>" + prompt +
      text + '<div class="tokens">' + tokensHtml(r, 0, Math.min(r.lp.length, state.preview)) +
      (r.lp.length > state.preview ? '<button class="more">show the other ' + (r.lp.length - state.preview) +
        " tokens</button>" : "") + "</div></div>";
  }

  function responseText(r) {  // the decoded response: its pieces without the special tokens' names
    if (r.pieces === null) return r.text;
    return r.special.length ? r.pieces.filter((_, i) => r.special.indexOf(i) < 0).join("") : r.pieces.join("");
  }

  function applyFilters() {
    const needle = state.search.toLowerCase();
    if (needle && lowerText === null) lowerText = responses.map((r) => responseText(r).toLowerCase());
    matches = [];
    for (let i = 0; i < responses.length; i++) {
      const r = responses[i];
      if (state.run >= 0 && r.run !== state.run) continue;
      if (state.stepMin !== null && r.step < state.stepMin) continue;
      if (state.stepMax !== null && r.step > state.stepMax) continue;
      if (state.correct === "correct" && !(r.correct > 0)) continue;
      if (state.correct === "wrong" && r.correct > 0) continue;
      if (state.flagged && r.flagged === 0) continue;
      if (needle && lowerText[i].indexOf(needle) < 0) continue;
      matches.push(i);
    }
  }

  function pagerHtml(pages) {
    const first = state.page * state.pageSize;
    const shown = matches.length ? (first + 1) + "–" + Math.min(first + state.pageSize, matches.length) : "0";
    return '<button data-go="0">«</button><button data-go="' + (state.page - 1) + '">‹ prev</button>' +
      "<span>responses " + shown + " of " + matches.length + " shown (" + responses.length + " in all) · page " +
      (matches.length ? state.page + 1 : 0) + " / " + pages + "</span>" +
      '<button data-go="' + (state.page + 1) + '">next ›</button><button data-go="' + (pages - 1) + '">»</button>';
  }

  function render() {
    const pages = Math.max(1, Math.ceil(matches.length / state.pageSize));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    const first = state.page * state.pageSize;
    const page = matches.slice(first, first + state.pageSize);
    box.innerHTML = page.length ? page.map(responseHtml).join("") :
      '<p class="empty">' + (responses.length ? "No response matches the filters." :
        "No samples to show: see the notes under Summary.") + "</p>";
    for (const id of ["pager-top", "pager-bottom"]) {
      const pager = $(id);
      pager.innerHTML = pagerHtml(pages);
      pager.querySelectorAll("button").forEach((b) => {
        const go = Number(b.dataset.go);
        b.disabled = go < 0 || go >= pages || go === state.page;
      });
    }
  }

  function update(patch) {  // change the filters, show their first page; returns the milliseconds taken
    const t = performance.now();
    Object.assign(state, patch);
    if (!("page" in patch)) state.page = 0;
    applyFilters();
    render();
    return performance.now() - t;
  }

  function legend() {
    const cell = (cls, label) => '<span class="t ' + cls + '">&nbsp;' + label + "&nbsp;</span>";
    const bins = state.colour === "entropy"
      ? ["entropy (nats):", cell("h0", "<0.1"), cell("h1", "0.1–0.5"), cell("h2", "0.5–1"), cell("h3", "1–2"), cell("h4", "≥2")]
      : ["probability:", cell("p0", "<0.1"), cell("p1", "0.1–0.3"), cell("p2", "0.3–0.6"), cell("p3", "0.6–0.9"), cell("p4", "≥0.9")];
    const outlines = ["· outlines:", cell("k-silenced", "silenced"), cell("k-penalised", "penalised"), cell("k-kept", "kept"),
      cell("k-dropped", "dropped"), "· " + cell("sp", "special"), cell("part", "◌ part of a character"), " · hover a token for its numbers"];
    $("legend").innerHTML = '<span class="' + (state.colour === "entropy" ? "by-entropy" : "by-prob") + '">' +
      bins.concat(outlines).join(" ") + "</span>";
  }

  function tokenTip(r, i) {
    const kind = kinds[r.kind.charCodeAt(i) - 48], lp = r.lp[i] / 1000;
    const piece = r.pieces === null ? "(no pieces in this file)" : JSON.stringify(r.pieces[i]);
    const lines = ["token " + (i + 1) + " of " + r.lp.length + ": " + piece,
      "p " + Math.exp(lp).toFixed(4) + "   log-prob " + lp.toFixed(3) + "   entropy " + (r.h[i] / 1000).toFixed(3),
      "advantage " + fmt(r.advantage, 4)];
    if (kind) lines.push(kind + (kind === "penalised" && r.coef ? " (coefficient " + r.coef[i] + ")" : ""));
    if (r.special.indexOf(i) >= 0) lines.push("special token (not in the verified text)");
    else if (r.pieces !== null && r.pieces[i] === "") lines.push("part of a multi-byte character: a later token shows it");
    return lines.join("\n");
  }

  function wire() {
    const runSelect = $("f-run");
    data.runs.forEach((run, i) => runSelect.insertAdjacentHTML("beforeend", '<option value="' + i + '">' + esc(run.label) + "</option>"));
    if (data.runs.length < 2) $("run-filter").hidden = true;
    const num = (el) => (el.value === "" ? null : Number(el.value));
    runSelect.addEventListener("change", () => update({ run: Number(runSelect.value) }));
    $("f-step-min").addEventListener("change", (e) => update({ stepMin: num(e.target) }));
    $("f-step-max").addEventListener("change", (e) => update({ stepMax: num(e.target) }));
    $("f-correct").addEventListener("change", (e) => update({ correct: e.target.value }));
    $("f-flagged").addEventListener("change", (e) => update({ flagged: e.target.checked }));
    $("f-page-size").addEventListener("change", (e) => update({ pageSize: Number(e.target.value) }));
    let timer = null;
    $("f-search").addEventListener("input", (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => update({ search: e.target.value }), 120);
    });
    document.querySelectorAll('input[name="colour"]').forEach((radio) => radio.addEventListener("change", () => {
      state.colour = radio.value;
      box.className = radio.value === "entropy" ? "by-entropy" : "by-prob";
      legend();
    }));
    for (const id of ["pager-top", "pager-bottom"]) {
      $(id).addEventListener("click", (e) => {
        const go = e.target.dataset && e.target.dataset.go;
        if (go !== undefined && !e.target.disabled) {
          update({ page: Number(go) });
          if (id === "pager-bottom") box.scrollIntoView();
        }
      });
    }
    box.addEventListener("click", (e) => {
      if (!e.target.classList.contains("more")) return;
      const r = responses[Number(e.target.closest("[data-r]").dataset.r)];
      e.target.insertAdjacentHTML("beforebegin", tokensHtml(r, state.preview, r.lp.length));
      e.target.remove();
    });
    box.addEventListener("mouseover", (e) => {
      const token = e.target.closest(".t"), card = token && token.closest("[data-r]");
      if (!card) { tip.hidden = true; return; }
      tip.textContent = tokenTip(responses[Number(card.dataset.r)], Number(token.dataset.i));
      tip.hidden = false;
    });
    box.addEventListener("mousemove", (e) => {
      if (tip.hidden) return;
      tip.style.left = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8) + "px";
      tip.style.top = (e.clientY + 16) + "px";
    });
    box.addEventListener("mouseleave", () => { tip.hidden = true; });
  }

  wire();
  legend();
  update({});
  const ready = performance.now();
  window.inspectPage = { update, state, matches: () => matches.slice(),
                         timing: { parseAndFirstPageMs: ready - start, readyAt: ready } };
  document.body.dataset.ready = "1";
})();
