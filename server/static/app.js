// VisionRAG web page: ask about an image (streamed answer) and search the history.
// Plain JS, no build step. Every request goes through api(), which adds the API key when one is known
// and, on a 401, asks for it once (a small dialog), keeps it in sessionStorage and retries.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "visionrag.apiKey";
const RECENT_LIMIT = 24;

// ---- API key and requests ----------------------------------------------------------------------
let keyPrompt = null; // the pending "ask for the key" promise, shared by every request that got a 401

function storedKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key");
  $("key-reason").textContent = reason;
  $("key-input").value = "";
  dialog.returnValue = "";
  keyPrompt = new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      keyPrompt = null;
      const key = $("key-input").value.trim();
      if (dialog.returnValue === "ok" && key) {
        sessionStorage.setItem(KEY_STORE, key);
        $("forget-key").hidden = false;
        resolve(key);
      } else {
        reject(new Error("This server needs an API key."));
      }
    }, { once: true });
  });
  dialog.showModal();
  return keyPrompt;
}

async function api(path, options = {}) {
  for (;;) {
    const key = storedKey();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const res = await fetch(path, { ...options, headers });
    if (res.status !== 401) return res;
    if (storedKey() !== key) continue; // another request already got a new key
    const detail = await errorDetail(res);
    const reason = key
      ? `The server refused the key (${detail}). Enter the right one; it is kept for this tab only.`
      : "This server needs an API key. It is kept for this tab only.";
    await askForKey(reason);
  }
}

async function errorDetail(res) {
  const text = await res.text();
  try {
    const body = JSON.parse(text);
    if (typeof body.detail === "string") return body.detail;
    if (body.detail) return JSON.stringify(body.detail);
    if (body.error && body.error.detail) return body.error.detail;
  } catch (_) { /* not JSON: fall through */ }
  return text.trim().slice(0, 300) || `${res.status} ${res.statusText}`;
}

async function apiJSON(path, options) {
  const res = await api(path, options);
  if (!res.ok) throw new Error(await errorDetail(res));
  return res.json();
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

// ---- image pickers (file input + drop zone + preview) -------------------------------------------
function imagePicker(dropId, onFile) {
  const drop = $(dropId);
  const input = $(drop.dataset.input);
  input.addEventListener("change", () => onFile(input.files[0] || null));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) onFile(file);
  });
  return { clear() { input.value = ""; } };
}

const objectURLs = new Map(); // owner -> blob URL, revoked when the owner shows something else
function setBlobSrc(owner, img, blob) {
  if (objectURLs.has(owner)) URL.revokeObjectURL(objectURLs.get(owner));
  if (!blob) { objectURLs.delete(owner); img.removeAttribute("src"); return; }
  const url = URL.createObjectURL(blob);
  objectURLs.set(owner, url);
  img.src = url;
}

// ---- Ask ---------------------------------------------------------------------------------------
let askFile = null;
let askAbort = null;
const askPicker = imagePicker("ask-drop", (file) => { askFile = file; if (file) $("ask-url").value = ""; showAskPreview(); });

function showAskPreview() {
  const url = $("ask-url").value.trim();
  const img = $("ask-preview-img");
  if (askFile) {
    setBlobSrc("ask", img, askFile);
    $("ask-preview-name").textContent = askFile.name;
  } else if (/^(https?:\/\/.+|data:image\/)/i.test(url)) {
    setBlobSrc("ask", img, null);
    img.src = url;
    $("ask-preview-name").textContent = "";
  } else {
    setBlobSrc("ask", img, null);
    $("ask-preview").hidden = true;
    return;
  }
  $("ask-preview").hidden = false;
}

$("ask-url").addEventListener("change", () => {
  if ($("ask-url").value.trim()) { askFile = null; askPicker.clear(); }
  showAskPreview();
});
$("ask-preview-img").addEventListener("error", () => { $("ask-preview").hidden = true; });
$("ask-clear").addEventListener("click", () => {
  askFile = null; askPicker.clear(); $("ask-url").value = ""; showAskPreview(); $("ask-url").focus();
});

function askBody() {
  const question = $("ask-question").value.trim();
  const url = $("ask-url").value.trim();
  if (!askFile && !url) throw new Error("Give an image: paste its URL, or choose or drop a file.");
  if (!question) throw new Error("Type a question about the image.");
  const fields = { user_query: question, stream: true };
  const tags = $("ask-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) fields.tags = tags;
  if ($("ask-max").value) fields.max_tokens = Number($("ask-max").value);
  if ($("ask-context").checked) fields.context = true;
  if (!askFile) return { body: JSON.stringify({ ...fields, image_url: url }), headers: { "Content-Type": "application/json" } };
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, Array.isArray(v) ? v.join(",") : String(v));
  form.append("image", askFile, askFile.name || "image");
  return { body: form, headers: {} };
}

async function* ndjson(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield JSON.parse(line);
    }
    if (done) break;
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

// ---- Markdown, safely: an answer becomes DOM nodes whose text is set with textContent, never parsed
// as HTML, so `<script>` or `<img onerror>` in an answer shows as text. Links only for http(s)/mailto.
const SAFE_LINK = /^(https?:\/\/|mailto:)/i;
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([^*]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([^_]*?[^\s_])_(?!\w)|\[([^\]\n]+)\]\(([^)\s]+)\)/g;

function renderInline(text, parent) {
  const pattern = new RegExp(INLINE.source, "g");
  let last = 0;
  let m;
  while ((m = pattern.exec(text))) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    if (m[1]) parent.append(el("code", { textContent: m[2] }));
    else if (m[3] || m[4]) renderInline(m[3] || m[4], parent.appendChild(document.createElement("strong")));
    else if (m[5] || m[6]) renderInline(m[5] || m[6], parent.appendChild(document.createElement("em")));
    else if (SAFE_LINK.test(m[8])) {
      renderInline(m[7], parent.appendChild(el("a", { href: m[8], rel: "noopener noreferrer nofollow", target: "_blank" })));
    } else parent.append(m[0]);
    last = pattern.lastIndex;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function renderMarkdown(source, root) {
  root.replaceChildren();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null;
  const flush = () => {
    if (paragraph.length) renderInline(paragraph.join("\n"), root.appendChild(document.createElement("p")));
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)/);
    if (fence) {
      flush(); list = null;
      const body = [];
      while (++i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i]);
      root.append(el("pre", {}, el("code", { textContent: body.join("\n") })));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/);
    if (!line.trim()) { flush(); list = null; }
    else if (heading) {
      flush(); list = null;
      renderInline(heading[2], root.appendChild(document.createElement(`h${Math.min(6, heading[1].length + 3)}`)));
    } else if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      if (!list || list.ordered !== ordered) {
        list = { ordered, node: root.appendChild(document.createElement(ordered ? "ol" : "ul")) };
        if (ordered && parseInt(item[1], 10) !== 1) list.node.start = parseInt(item[1], 10);
      }
      renderInline(item[2], list.node.appendChild(document.createElement("li")));
    } else if (list && /^\s+\S/.test(line)) {
      const li = list.node.lastChild;
      li.append("\n");
      renderInline(line.trim(), li);
    } else { list = null; paragraph.push(line); }
  }
  flush();
}

// The answer as it streams: the raw text is kept (data-markdown), the view re-rendered once a frame.
let answerFrame = 0;
function showAnswer(text) {
  const answer = $("answer");
  answer.dataset.markdown = text;
  if (!answerFrame) {
    answerFrame = requestAnimationFrame(() => {
      answerFrame = 0;
      renderMarkdown(answer.dataset.markdown || "", answer);
    });
  }
}

function revealAnswer() {
  $("answer-box").scrollIntoView({ block: "nearest" });
}

function setAnswerState(state) {
  $("answer").dataset.state = state;
  $("ask-submit").disabled = state === "streaming";
  $("ask-stop").hidden = state !== "streaming";
}

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("ask-error"), "");
  let request;
  try { request = askBody(); } catch (err) { showError($("ask-error"), err.message); return; }
  const answer = $("answer");
  const meta = $("answer-meta");
  let text = "";
  showAnswer(text);
  showContext(null);
  meta.textContent = "Waiting for the model…";
  $("answer-box").hidden = false;
  revealAnswer();
  setAnswerState("streaming");
  askAbort = new AbortController();
  const started = performance.now();
  try {
    const res = await api("/predict", { method: "POST", ...request, signal: askAbort.signal });
    if (!res.ok) throw new Error(await errorDetail(res));
    let final = null;
    for await (const line of ndjson(res)) {
      if (line.error) throw new Error(line.error.detail || "the answer failed");
      if (line.delta) {
        if (!text) revealAnswer();
        text += line.delta;
        showAnswer(text);
        meta.textContent = "Answering…";
      }
      if (line.done) final = line;
    }
    if (!final) throw new Error("The answer ended early; see the server log.");
    cancelAnimationFrame(answerFrame);
    answerFrame = 0;
    answer.dataset.markdown = final.output;
    renderMarkdown(final.output, answer);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const usage = final.usage || {};
    meta.textContent = `${final.model} · ${usage.completion_tokens} tokens (${usage.prompt_tokens} in the prompt) · ${seconds} s`
      + (final.finish_reason === "length" ? " · stopped at the token limit" : "");
    if (final.id) answer.dataset.id = final.id; else delete answer.dataset.id;
    showContext(final);
    setAnswerState("done");
    if (historyMode === "recent") loadRecent();
  } catch (err) {
    setAnswerState("error");
    meta.textContent = "";
    if (!text) $("answer-box").hidden = true;
    showError($("ask-error"), err.name === "AbortError" ? "Stopped." : err.message);
  } finally {
    askAbort = null;
  }
});
$("ask-stop").addEventListener("click", () => askAbort && askAbort.abort());

// The earlier interactions an answer was given with ("Use history"), each opening its card.
function showContext(final) {
  const box = $("answer-context");
  const list = $("answer-context-list");
  const note = $("answer-context-note");
  list.replaceChildren();
  if (!final || !Array.isArray(final.context)) { box.hidden = true; return; }
  for (const c of final.context) {
    const link = el("a", { href: `#interaction-${c.id}`, className: "context-link",
      textContent: c.query || "(imported document)" });
    link.dataset.id = c.id;
    link.addEventListener("click", (e) => { e.preventDefault(); openById(c.id); });
    list.append(el("li", {}, link, el("span", { className: "meta", textContent: ` · score ${c.score.toFixed(3)}` })));
  }
  const message = final.context_error
    ? `No context: ${final.context_error}`
    : (final.context.length ? "" : "No earlier interaction matched.");
  note.textContent = message;
  note.hidden = !message;
  box.hidden = false;
}

async function openById(id) {
  try {
    openDetail(await apiJSON(`/history/${encodeURIComponent(id)}`));
  } catch (err) {
    showError($("ask-error"), err.message);
  }
}

// ---- History -----------------------------------------------------------------------------------
let searchFile = null;
let historyMode = "recent"; // "recent" (GET /history) or "search"
const searchPicker = imagePicker("search-drop", (file) => {
  searchFile = file;
  $("search-image").hidden = !file;
  setBlobSrc("search", $("search-image-img"), file);
});
$("search-image-clear").addEventListener("click", () => {
  searchFile = null; searchPicker.clear(); $("search-image").hidden = true;
  setBlobSrc("search", $("search-image-img"), null); $("search-file").focus();
});

function dayBound(value, endOfDay) {
  if (!value) return null;
  const [y, m, d] = value.split("-").map(Number);
  const local = endOfDay ? new Date(y, m - 1, d, 23, 59, 59, 999) : new Date(y, m - 1, d);
  return local.toISOString();
}

function filters() {
  const since = dayBound($("search-since").value, false);
  const until = dayBound($("search-until").value, true);
  const tag = $("search-tag").value.trim();
  return { since, until, tags: tag ? [tag] : null };
}

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
$("search-recent").addEventListener("click", () => {
  $("search-text").value = ""; searchFile = null; searchPicker.clear(); $("search-image").hidden = true;
  loadRecent();
});

async function runSearch() {
  const text = $("search-text").value.trim();
  if (!text && !searchFile) return loadRecent();
  historyMode = "search";
  const f = filters();
  const fields = { limit: 24, against: $("search-against").value };
  if (text) fields.text = text;
  if (f.since) fields.since = f.since;
  if (f.until) fields.until = f.until;
  if (f.tags) fields.tags = f.tags;
  let options;
  if (searchFile) {
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, Array.isArray(v) ? v.join(",") : String(v));
    form.append("image", searchFile, searchFile.name || "image");
    options = { method: "POST", body: form };
  } else {
    options = { method: "POST", body: JSON.stringify(fields), headers: { "Content-Type": "application/json" } };
  }
  await showResults(apiJSON("/history/search", options), (body) =>
    `${body.results.length} found in ${Math.round(body.took_ms)} ms`);
}

async function loadRecent() {
  historyMode = "recent";
  const f = filters();
  await showResults(apiJSON(`/history?limit=${RECENT_LIMIT}`).then((body) => ({
    results: body.results.filter((r) =>
      (!f.since || new Date(r.created_at) >= new Date(f.since))
      && (!f.until || new Date(r.created_at) <= new Date(f.until))
      && (!f.tags || f.tags.every((t) => (r.tags || []).includes(t)))),
  })), (body) => (body.results.length ? `Most recent ${body.results.length}` : "Nothing asked yet."));
}

async function showResults(pending, describe) {
  const status = $("search-status");
  showError($("search-error"), "");
  status.textContent = "Searching…";
  $("results").setAttribute("aria-busy", "true");
  try {
    const body = await pending;
    renderCards(body.results);
    status.textContent = describe(body);
  } catch (err) {
    status.textContent = "";
    showError($("search-error"), err.message);
  } finally {
    const list = $("results");
    list.removeAttribute("aria-busy");
    list.dataset.seq = Number(list.dataset.seq || 0) + 1; // one more search shown (tests wait on it)
  }
}

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function excerpt(text, n = 180) {
  return text.length > n ? `${text.slice(0, n).trimEnd()}…` : text;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child != null) node.append(child);
  return node;
}

// Stored images need the API key, so they are fetched and shown as blob URLs.
async function loadImage(id, img, owner = img, still = () => true) {
  try {
    const res = await api(`/history/${encodeURIComponent(id)}/image`);
    if (!res.ok) throw new Error(await errorDetail(res));
    const blob = await res.blob();
    if (still()) setBlobSrc(owner, img, blob);
  } catch (_) {
    img.alt = "image unavailable";
    img.classList.add("missing");
  }
}

function renderCards(results) {
  const list = $("results");
  for (const img of list.querySelectorAll("img")) setBlobSrc(img, img, null);
  list.replaceChildren();
  for (const r of results) {
    const img = el("img", { alt: "", loading: "lazy", width: 96, height: 96 });
    const open = el("button", { type: "button", className: "card-open" },
      el("span", { className: "card-q", textContent: r.query }));
    open.setAttribute("aria-label", `Open: ${r.query}`);
    open.addEventListener("click", () => openDetail(r));
    const del = el("button", { type: "button", className: "link danger-text", textContent: "Delete" });
    del.setAttribute("aria-label", `Delete: ${r.query}`);
    del.addEventListener("click", () => confirmDelete(r.id, del));
    const facts = [when(r.created_at)];
    if (typeof r.score === "number") facts.unshift(`score ${r.score.toFixed(3)}`);
    if (r.tags && r.tags.length) facts.push(r.tags.map((t) => `#${t}`).join(" "));
    const card = el("article", { className: "card" },
      el("div", { className: "thumb" }, img),
      el("div", { className: "card-body" },
        open,
        el("p", { className: "card-a", textContent: excerpt(r.answer || "") }),
        el("p", { className: "card-meta" }, el("span", { textContent: facts.join(" · ") }), del)));
    card.dataset.id = r.id;
    list.append(el("li", {}, card));
    if (r.image) loadImage(r.id, img); // null: a point stored by an earlier version without an image copy
    else { img.alt = "no stored image"; img.classList.add("missing"); }
  }
}

// ---- detail dialog and delete ------------------------------------------------------------------
let detailId = null;

function openDetail(r) {
  detailId = r.id;
  const fields = $("detail-fields");
  fields.replaceChildren();
  const rows = [["Question", r.query], ["Answer", r.answer], ["Asked", when(r.created_at)], ["Model", r.model]];
  if (typeof r.score === "number") rows.push(["Score", r.score.toFixed(4)]);
  if (r.tags && r.tags.length) rows.push(["Tags", r.tags.join(", ")]);
  if (r.user) rows.push(["User", r.user]);
  if (r.context && r.context.length) rows.push(["Built on", r.context.join(", ")]);
  if (/^(https?|data):/i.test(r.image_url || "")) rows.push(["Image URL", r.image_url]);
  rows.push(["Id", r.id]);
  for (const [name, value] of rows) fields.append(el("dt", { textContent: name }), el("dd", { textContent: value ?? "" }));
  showError($("detail-error"), "");
  const img = $("detail-img");
  setBlobSrc("detail", img, null);
  img.alt = `The image for: ${r.query}`;
  $("detail").showModal();
  img.classList.remove("missing");
  if (r.image) loadImage(r.id, img, "detail", () => detailId === r.id);
  else { img.alt = "no stored image"; img.classList.add("missing"); }
}

$("detail-delete").addEventListener("click", () => confirmDelete(detailId, $("detail-delete")));

function confirmDelete(id, returnFocus) {
  const dialog = $("confirm");
  dialog.returnValue = "";
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "delete") { if (returnFocus.isConnected) returnFocus.focus(); return; }
    const errorEl = $("detail").open ? $("detail-error") : $("search-error");
    try {
      const res = await api(`/history/${encodeURIComponent(id)}`, { method: "DELETE" });
      if (!res.ok && res.status !== 404) throw new Error(await errorDetail(res));
      if ($("detail").open) $("detail").close();
      const card = document.querySelector(`.card[data-id="${CSS.escape(id)}"]`);
      if (card) card.closest("li").remove();
      $("search-status").textContent = "Deleted.";
      $("search-text").focus();
    } catch (err) {
      showError(errorEl, err.message);
    }
  }, { once: true });
  dialog.showModal();
}

// ---- start -------------------------------------------------------------------------------------
$("forget-key").hidden = !storedKey();
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  $("forget-key").hidden = true;
});
loadRecent();
