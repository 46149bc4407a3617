// The public API, as the dashboard calls it: `/v1` with the tab's key as a Bearer header.
// The key lives in this tab's sessionStorage only: never in a URL, a cookie or a log.

const KEY = "promptbatch.api_key";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Whether the API asks for a key (the page's shell says, so no call has to fail first). */
export function keyRequired() {
  const meta = document.querySelector('meta[name="promptbatch-auth"]');
  return meta !== null && meta.content === "required";
}

export function heldKey() {
  return sessionStorage.getItem(KEY);
}

export function holdKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

/** fetch() against the API; a 401 raises Unauthorized, any other error an ApiError with
 * the API's own message. */
export async function call(
  path,
  { method = "GET", json, body, type, accept, signal, lastEventId } = {},
) {
  const headers = new Headers();
  if (lastEventId) headers.set("Last-Event-ID", lastEventId);
  const key = heldKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  if (accept) headers.set("Accept", accept);
  const init = { method, headers, signal, credentials: "omit", cache: "no-store" };
  if (json !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    headers.set("Content-Type", type);
    init.body = body;
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized("The API key was refused.");
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const answer = await response.json();
      if (answer && answer.error && answer.error.message) message = answer.error.message;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export async function getJSON(path, options) {
  const response = await call(path, options);
  return response.status === 204 ? null : response.json();
}

/** A batch's server-sent events, read with fetch so that the Bearer header goes along
 * (EventSource cannot send one): yields {event, data, id} until the stream ends. */
export async function* events(batchId, { lastId, signal } = {}) {
  const response = await call(`/v1/batches/${encodeURIComponent(batchId)}/events`, {
    accept: "text/event-stream",
    signal,
    lastEventId: lastId,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let carried = ""; // a "\r" that ended a piece: the next may start with its "\n"
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let text = carried + value;
      carried = text.endsWith("\r") ? "\r" : "";
      if (carried) text = text.slice(0, -1);
      buffer += text.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const parsed = parseFrame(frame);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseFrame(frame) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith(":")) continue; // a ping
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (data.length === 0) return null;
  return { event, id, data: JSON.parse(data.join("\n")) };
}
