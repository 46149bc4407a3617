// The service's health, from the open Prometheus `/metrics`: workers alive, queue depth,
// job slots busy, provider pacing and items per second across the service.
import { fill, h, number, setText } from "./dom.js";

const EVERY_MS = 3000;

/** Prometheus text as {name: [{labels, value}]}; `_total` of counters dropped. */
export function parseMetrics(text) {
  const found = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const name = m[1].replace(/_total$/, "");
    const labels = {};
    for (const pair of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    (found[name] ||= []).push({ labels, value: Number(m[4]) });
  }
  return found;
}

function sum(metrics, name, where = () => true) {
  return (metrics[name] || []).filter((s) => where(s.labels)).reduce((t, s) => t + s.value, 0);
}

/** The health panel, updating itself; returns its stop function. */
export function healthPanel(el) {
  const cells = {};
  const tile = (key, label) => {
    cells[key] = h("dd", { dataset: { health: key } }, "–");
    return h("div", { class: "tile" }, h("dt", {}, label), cells[key]);
  };
  fill(el,
    h("h2", { id: "health-title" }, "Service"),
    h("dl", { class: "tiles", "aria-labelledby": "health-title" },
      tile("workers", "Workers alive"),
      tile("queue", "Queued chunk jobs"),
      tile("slots", "Job slots busy"),
      tile("rate", "Items per second"),
      tile("pacing", "Waiting for rate limits"),
      tile("429s", "Provider 429s"),
    ),
  );
  let last = null;
  let timer = null;
  let stopped = false;
  const update = async () => {
    try {
      const response = await fetch("/metrics", { cache: "no-store", credentials: "omit" });
      if (!response.ok) throw new Error(String(response.status));
      const metrics = parseMetrics(await response.text());
      const now = performance.now() / 1000;
      const items = sum(metrics, "promptbatch_items");
      const waited = sum(metrics, "promptbatch_pacing_wait_seconds");
      setText(cells.workers, number(sum(metrics, "promptbatch_workers_alive")));
      setText(cells.queue, number(sum(metrics, "promptbatch_queue_jobs")));
      const busy = sum(metrics, "promptbatch_job_slots", (l) => l.state === "busy");
      const alive = sum(metrics, "promptbatch_job_slots", (l) => l.state === "alive");
      setText(cells.slots, `${number(busy)} of ${number(alive)}`);
      setText(cells["429s"], number(sum(metrics, "promptbatch_provider_rate_limited")));
      if (last) {
        const dt = Math.max(now - last.at, 0.001);
        setText(cells.rate, ((items - last.items) / dt).toFixed(1));
        setText(cells.pacing, `${((waited - last.waited) / dt).toFixed(1)} s/s`);
      }
      last = { at: now, items, waited };
    } catch {
      setText(cells.workers, "?");
    }
    if (!stopped) timer = setTimeout(update, EVERY_MS);
  };
  update();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
