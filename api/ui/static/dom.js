// Building the page. Every text from the API (prompts, outputs, errors, ids, metadata) goes
// in as text nodes or attribute values, never as HTML: a reply of `<img onerror=...>` is text.

/** An element with attributes (`on*` are listeners, `dataset` sets data-*) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Set a text only when it changed (live updates leave selection and focus alone). */
export function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function number(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

/** An ISO time as local `YYYY-MM-DD HH:MM:SS`, or a dash. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** A status as a badge: its text, and a class for its colour. */
export function badge(status, attrs = {}) {
  return h("span", { class: `badge s-${status}`, ...attrs }, status);
}

/** A message in the page's alert area (errors of actions, of loading). */
export function say(text, kind = "error") {
  const area = document.getElementById("alerts");
  if (!area) return;
  fill(area, h("p", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status" }, text));
}

export function clearSay() {
  const area = document.getElementById("alerts");
  if (area) area.replaceChildren();
}

/** Save a Blob as a file the browser downloads. */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
