// The batches page: newest first, paged, filtered by status, updated live; the service's
// health; the new-batch form.
import { Unauthorized, events, getJSON } from "./api.js";
import { badge, fill, h, number, say, setText, when } from "./dom.js";
import { newBatchForm } from "./form.js";
import { healthPanel } from "./health.js";

const PAGE = 100; // rows a load adds (one page of the API when no filter is set)
const FETCH = 100; // the API's largest page
const MOST_PAGES = 20; // per "load", when a filter leaves few rows a page
const EVERY_MS = 2000;
// Running batches whose rows follow their events stream (the rest follow the 2 s refresh).
// A browser holds at most 6 connections to one server over HTTP/1.1, shared by all its tabs:
// one stream a list tab leaves room for other tabs and the page's own calls.
const MOST_STREAMS = 1;
const FINAL = new Set(["completed", "failed", "cancelled", "expired"]);
export const BATCH_STATUSES = [
  "queued", "in_progress", "cancelling", "completed", "failed", "cancelled", "expired",
];

export function done(batch) {
  const c = batch.request_counts;
  return c.total - c.pending;
}

export async function listView(main) {
  const rows = new Map();
  const body = h("tbody");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older batches");
  const empty = h("p", { class: "muted", hidden: true }, "No batches yet.");
  const filter = h("select", { id: "batch-filter", name: "batch_status" },
    h("option", { value: "" }, "all"),
    BATCH_STATUSES.map((s) => h("option", { value: s }, s)),
  );
  const formArea = h("section", { class: "card", hidden: true, "aria-label": "New batch" });
  const openForm = h("button", {
    type: "button", dataset: { action: "new-batch" }, "aria-expanded": "false",
  }, "New batch");
  const healthArea = h("section", { class: "card", "aria-labelledby": "health-title" });
  fill(main,
    h("div", { class: "heading" },
      h("h1", {}, "Batches"),
      h("div", { class: "controls" },
        h("label", { for: "batch-filter" }, "Status"), filter, openForm),
    ),
    h("div", { id: "alerts", "aria-live": "polite" }),
    formArea,
    healthArea,
    h("div", { class: "scroll" },
      h("table", { class: "batches" },
        h("caption", { class: "sr-only" }, "Batches, newest first"),
        h("thead", {}, h("tr", {},
          ["Batch", "Status", "Model", "Progress", "Created", "Finished", "Tokens"]
            .map((t) => h("th", { scope: "col" }, t)))),
        body)),
    empty,
    more,
  );

  openForm.addEventListener("click", () => {
    const opening = formArea.hidden;
    if (opening && !formArea.firstChild) formArea.append(newBatchForm());
    formArea.hidden = !opening;
    openForm.setAttribute("aria-expanded", String(opening));
    if (opening) formArea.querySelector("textarea, input")?.focus();
  });

  let next = null; // the cursor of the next older page
  let loads = 0; // a load that a newer one (another filter) replaced stops at its next step
  const wanted = (batch) => !filter.value || batch.status === filter.value;

  async function load() {
    const mine = (loads += 1);
    more.disabled = true;
    try {
      let added = 0;
      for (let page = 0; page < MOST_PAGES && added < PAGE; page += 1) {
        const query = new URLSearchParams({ limit: String(FETCH) });
        if (next) query.set("after", next);
        const list = await getJSON(`/v1/batches?${query}`);
        if (mine !== loads) return;
        for (const batch of list.data) {
          if (!wanted(batch) || rows.has(batch.id)) continue;
          const row = batchRow(batch);
          rows.set(batch.id, row);
          body.append(row.tr);
          added += 1;
        }
        next = list.has_more ? list.next_after : null;
        if (!next) break;
      }
      more.hidden = !next;
      empty.hidden = rows.size > 0;
    } finally {
      if (mine === loads) more.disabled = false;
    }
  }

  async function refresh() {
    const list = await getJSON(`/v1/batches?limit=${FETCH}`);
    const fresh = []; // submitted since: newer than every row shown
    let known = false;
    for (const batch of list.data) {
      const row = rows.get(batch.id);
      if (row) {
        row.update(batch);
        known = true;
      } else if (!known && wanted(batch)) {
        fresh.push(batch);
      }
    }
    const first = body.firstChild;
    for (const batch of fresh) {
      const row = batchRow(batch);
      rows.set(batch.id, row);
      body.insertBefore(row.tr, first);
    }
    empty.hidden = rows.size > 0;
  }

  const streams = new Map(); // batch id -> AbortController of its open events stream
  function follow() {
    for (const [id, row] of rows) {
      if (streams.size >= MOST_STREAMS) break;
      if (row.final || streams.has(id)) continue;
      const abort = new AbortController();
      streams.set(id, abort);
      (async () => {
        try {
          for await (const message of events(id, { signal: abort.signal })) {
            if (message.event === "batch") rows.get(id)?.update(message.data);
          }
        } catch {
          // the stream failed (a restart, a 429 for too many streams): the refresh goes on
        } finally {
          streams.delete(id);
        }
      })();
    }
  }

  filter.addEventListener("change", () => {
    for (const abort of streams.values()) abort.abort();
    rows.clear();
    body.replaceChildren();
    next = null;
    load().catch(fail);
  });
  more.addEventListener("click", () => load().catch(fail));

  await load();
  const stopHealth = healthPanel(healthArea);
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      await refresh();
      if (!stopped) follow();
    } catch (error) {
      fail(error);
    }
    if (!stopped) timer = setTimeout(tick, EVERY_MS);
  };
  follow();
  timer = setTimeout(tick, EVERY_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
    stopHealth();
    for (const abort of streams.values()) abort.abort();
  };
}

function fail(error) {
  if (error instanceof Unauthorized) {
    window.dispatchEvent(new Event("promptbatch:unauthorized"));
    return;
  }
  say(`Could not load the batches: ${error.message || error}`);
}

/** A batch's row, and how to bring it up to date. */
function batchRow(batch) {
  const href = `/ui/batches/${encodeURIComponent(batch.id)}`;
  const name = batch.metadata && batch.metadata.name;
  const progress = h("progress", { max: 1, value: 0 });
  const f = {
    status: h("span", { dataset: { field: "status" } }),
    succeeded: h("span", { dataset: { field: "succeeded" } }),
    failed: h("span", { dataset: { field: "failed" } }),
    total: h("span", { dataset: { field: "total" } }),
    finished: h("td"),
    tokens: h("td", { class: "num" }),
  };
  const tr = h("tr", { dataset: { batchId: batch.id } },
    h("td", {},
      h("a", { href, class: "mono" }, batch.id),
      name ? h("div", { class: "muted" }, name) : null),
    h("td", {}, f.status),
    h("td", {}, batch.model, h("div", { class: "muted" }, batch.mode || "direct")),
    h("td", { class: "progress-cell" },
      progress,
      h("div", { class: "counts" },
        h("span", { class: "ok", title: "succeeded" }, f.succeeded), " ok · ",
        h("span", { class: "bad", title: "failed" }, f.failed), " failed · ",
        f.total, " total")),
    h("td", {}, when(batch.created_at)),
    f.finished,
    f.tokens,
  );
  const update = (b) => {
    const c = b.request_counts;
    if (f.status.textContent !== b.status) fill(f.status, badge(b.status));
    setText(f.succeeded, number(c.succeeded));
    setText(f.failed, number(c.failed));
    setText(f.total, number(c.total));
    progress.max = Math.max(c.total, 1);
    progress.value = done(b);
    progress.setAttribute("aria-label", `${done(b)} of ${c.total} items done`);
    setText(f.finished, when(b.finished_at));
    setText(f.tokens, number(b.usage.total_tokens));
    row.final = FINAL.has(b.status);
    tr.classList.toggle("final", row.final);
  };
  const row = { tr, update, final: false };
  update(batch);
  return row;
}
