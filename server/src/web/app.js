// The janus serve page: talks only to the public API (/v1/...), as any
// script could. No framework, no build step, nothing from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "janus-api-key";

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function askKey() {
  $("key-form").hidden = false;
  $("api-key").focus();
}

/** A request to the API; a failed one throws the API's own error message. */
async function api(path, body, signal) {
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, {
    method: body ? "POST" : "GET",
    headers,
    body: body ? JSON.stringify(body) : undefined,
    signal,
  });
  if (response.status === 401) {
    askKey();
    throw new Error("This server needs an API key: enter it above.");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message || message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

/** The JSON payloads of a server-sent event stream, up to [DONE]. */
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        yield event;
      }
    }
  }
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

// Tabs: click, or the arrow keys on the focused tab.
const tabs = [$("tab-understand"), $("tab-generate")];
function select(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  tab.focus();
}
for (const t of tabs) {
  t.addEventListener("click", () => select(t));
  t.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      select(tabs[(tabs.indexOf(t) + 1) % tabs.length]);
      e.preventDefault();
    }
  });
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value);
  $("key-form").hidden = true;
  showError("");
  loadModel();
});

async function loadModel() {
  try {
    const models = await (await api("/v1/models")).json();
    $("model-name").textContent = models.data[0].id;
  } catch (e) {
    showError(e.message);
  }
}

// ---- Understand ----
const chat = { turns: [], pending: [], loading: [], controller: null };

function addImages(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    chat.loading.push(new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => {
        chat.pending.push(reader.result);
        renderPending();
        resolve();
      };
      reader.onerror = () => {
        showError(`Cannot read ${file.name}`);
        resolve();
      };
      reader.readAsDataURL(file);
    }));
  }
}

function renderPending() {
  const list = $("und-pending");
  list.replaceChildren(...chat.pending.map((url, i) => {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = url;
    img.alt = `Image ${i + 1} to send`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "remove";
    remove.setAttribute("aria-label", `Remove image ${i + 1}`);
    remove.addEventListener("click", () => {
      chat.pending.splice(i, 1);
      renderPending();
    });
    item.append(img, remove);
    return item;
  }));
}

function turnItem(role, text, images) {
  const item = document.createElement("li");
  item.className = role;
  for (const [i, url] of images.entries()) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = `Image ${i + 1}`;
    item.append(img);
  }
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  $("conversation").append(item);
  return body;
}

function chatMessages() {
  return chat.turns.map((t) => t.role === "user"
    ? {
      role: "user",
      content: [
        ...t.images.map((url) => ({ type: "image_url", image_url: { url } })),
        { type: "text", text: t.text },
      ],
    }
    : { role: "assistant", content: t.text });
}

async function ask(e) {
  e.preventDefault();
  const question = $("und-question").value.trim();
  if (!question || chat.controller) return;
  await Promise.all(chat.loading);
  showError("");
  const images = chat.pending.splice(0);
  renderPending();
  chat.turns.push({ role: "user", text: question, images });
  turnItem("user", question, images);
  $("und-question").value = "";
  const answer = turnItem("assistant", "", []);
  answer.parentElement.dataset.state = "streaming";
  const body = {
    model: "janus",
    messages: chatMessages(),
    stream: true,
    temperature: number("und-temperature"),
    top_p: number("und-top-p"),
    max_tokens: number("und-max-tokens"),
    seed: number("und-seed"),
  };
  chat.controller = new AbortController();
  $("und-stop").disabled = false;
  $("und-send").disabled = true;
  let text = "";
  try {
    const response = await api("/v1/chat/completions", body, chat.controller.signal);
    for await (const chunk of events(response)) {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        text += delta.content;
        answer.textContent = text;
      }
    }
    answer.parentElement.dataset.state = "done";
  } catch (err) {
    answer.parentElement.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    chat.turns.push({ role: "assistant", text, images: [] });
    chat.controller = null;
    $("und-stop").disabled = true;
    $("und-send").disabled = false;
  }
}

$("und-form").addEventListener("submit", ask);
$("und-question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) ask(e);
});
$("und-stop").addEventListener("click", () => chat.controller && chat.controller.abort());
$("und-new").addEventListener("click", () => {
  if (chat.controller) chat.controller.abort();
  chat.turns = [];
  chat.pending = [];
  renderPending();
  $("conversation").replaceChildren();
  showError("");
  $("und-question").focus();
});
$("und-file").addEventListener("change", (e) => {
  addImages(e.target.files);
  e.target.value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  addImages(e.dataTransfer.files);
});
document.addEventListener("paste", (e) => {
  if (!$("panel-understand").hidden && e.clipboardData.files.length) addImages(e.clipboardData.files);
});

// ---- Generate ----
let generation = null;

async function generate(e) {
  e.preventDefault();
  if (generation) return;
  showError("");
  if ($("gen-random").checked) $("gen-seed").value = String(Math.floor(Math.random() * 2 ** 31));
  const seed = number("gen-seed");
  const body = {
    prompt: $("gen-prompt").value,
    n: number("gen-n"),
    cfg_weight: number("gen-cfg"),
    temperature: number("gen-temperature"),
    seed,
    size: $("gen-size").value,
    response_format: "b64_json",
    stream: true,
    stream_progress: true,
    partial_images: 2,
  };
  const grid = $("gen-grid");
  const progress = $("gen-progress");
  grid.replaceChildren();
  grid.dataset.state = "running";
  progress.hidden = false;
  progress.value = 0;
  $("gen-message").textContent = "waiting for the model";
  generation = new AbortController();
  $("gen-stop").disabled = false;
  $("gen-go").disabled = true;
  // One grid cell per image, in order: previews first, then the image.
  const cells = new Map();
  const cell = (index) => {
    if (!cells.has(index)) {
      const item = document.createElement("li");
      cells.set(index, item);
      const after = [...cells.keys()].filter((i) => i > index).sort((a, b) => a - b)[0];
      grid.insertBefore(item, after === undefined ? null : cells.get(after));
    }
    return cells.get(index);
  };
  try {
    const response = await api("/v1/images/generations", body, generation.signal);
    for await (const ev of events(response)) {
      if (ev.type === "image_generation.progress") {
        progress.max = ev.total;
        progress.value = ev.step;
        $("gen-message").textContent = `step ${ev.step} of ${ev.total}`;
      } else if (ev.type === "image_generation.partial_image") {
        cell(ev.index).replaceChildren(figure(ev.b64_json, seed, ev.index, ev.partial_image_index));
      } else if (ev.type === "image_generation.completed") {
        cell(ev.index).replaceChildren(figure(ev.b64_json, seed, ev.index));
      }
    }
    grid.dataset.state = "done";
    $("gen-message").textContent = `${grid.children.length} image(s), seed ${seed}`;
  } catch (err) {
    grid.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    $("gen-message").textContent = err.name === "AbortError" ? "stopped" : "";
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    generation = null;
    progress.hidden = true;
    $("gen-stop").disabled = true;
    $("gen-go").disabled = false;
  }
}

/** An image with its seed and a download link, or (preview set) a preview. */
function figure(b64, seed, index, preview) {
  const url = "data:image/png;base64," + b64;
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = url;
  img.className = preview === undefined ? "final" : "preview";
  img.alt = `${$("gen-prompt").value} (seed ${seed}, image ${index + 1})`;
  const caption = document.createElement("figcaption");
  const label = document.createElement("span");
  if (preview === undefined) {
    label.textContent = `seed ${seed} · image ${index + 1}`;
    const link = document.createElement("a");
    link.href = url;
    link.download = `janus-${seed}-${index + 1}.png`;
    link.textContent = "download";
    caption.append(label, link);
  } else {
    label.textContent = `image ${index + 1}: preview ${preview + 1}`;
    caption.append(label);
  }
  fig.append(img, caption);
  return fig;
}

$("gen-form").addEventListener("submit", generate);
$("gen-stop").addEventListener("click", () => generation && generation.abort());
$("gen-seed").addEventListener("input", () => { $("gen-random").checked = false; });

loadModel();
