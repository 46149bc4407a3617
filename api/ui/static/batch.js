// One batch's page: counts, progress, tokens, timings, an items-per-second chart, pacing,
// provider batches; its items, paged, filtered and searched; cancel, retry, delete; downloads.
import { ApiError, Unauthorized, call, events, getJSON } from "./api.js";
import { badge, clearSay, download, fill, h, number, say, seconds, setText, when } from "./dom.js";
import { Chart } from "./chart.js";

const ITEMS = 50;
const LOOKS = 3; // API pages one filtered load looks through (each up to 5,000 items)
const FINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const ITEM_STATUSES = ["all", "pending", "succeeded", "failed", "cancelled", "expired"];
const POLL_MS = 2000;

export async function batchView(main, id) {
  const path = `/v1/batches/${encodeURIComponent(id)}`;
  let batch;
  try {
    batch = await getJSON(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      fill(main, h("h1", {}, "No such batch"),
        h("p", {}, "There is no batch ", h("code", {}, id), " for this key. ",
          h("a", { href: "/ui" }, "All batches")));
      return null;
    }
    throw error;
  }
  const view = new BatchPage(main, id, path);
  view.show(batch);
  await view.items.load();
  view.follow();
  return () => view.stop();
}

class BatchPage {
  constructor(main, id, path) {
    this.id = id;
    this.path = path;
    this.abort = new AbortController();
    this.stopped = false;
    this.chart = new Chart("Items per second");
    const f = (name) => h("span", { dataset: { field: name } });
    this.f = {
      status: f("status"), succeeded: f("succeeded"), failed: f("failed"), total: f("total"),
      cancelled: h("span"), expired: h("span"), pending: h("span"),
    };
    this.progress = h("progress", { max: 1, value: 0 });
    this.facts = h("dl", { class: "facts" });
    this.providerBatches = h("div");
    this.error = h("div");
    this.actions = h("div", { class: "actions" });
    this.items = new ItemsTable(this);
    const name = h("span", { class: "muted" });
    this.name = name;
    fill(main,
      h("p", {}, h("a", { href: "/ui" }, "← All batches")),
      h("div", { class: "heading" },
        h("h1", {}, h("span", { class: "mono" }, id), " ", name),
        h("div", {}, "Status: ", this.f.status)),
      h("div", { id: "alerts", "aria-live": "polite" }),
      this.error,
      h("section", { class: "card", "aria-label": "Progress" },
        this.progress,
        h("p", { class: "counts" },
          h("span", { class: "ok" }, this.f.succeeded), " succeeded · ",
          h("span", { class: "bad" }, this.f.failed), " failed · ",
          this.f.cancelled, " cancelled · ", this.f.expired, " expired · ",
          this.f.pending, " pending · ", this.f.total, " total"),
        this.actions),
      h("div", { class: "two" },
        h("section", { class: "card", "aria-label": "Details" }, this.facts, this.providerBatches),
        h("section", { class: "card", "aria-label": "Items per second" }, this.chart.el)),
      this.items.el,
    );
  }

  show(batch) {
    this.batch = batch;
    const c = batch.request_counts;
    if (this.f.status.textContent !== batch.status) fill(this.f.status, badge(batch.status));
    for (const key of ["succeeded", "failed", "total", "cancelled", "expired", "pending"]) {
      setText(this.f[key], number(c[key]));
    }
    setText(this.name, (batch.metadata && batch.metadata.name) || "");
    this.progress.max = Math.max(c.total, 1);
    this.progress.value = c.total - c.pending;
    this.progress.setAttribute("aria-label", `${c.total - c.pending} of ${c.total} items done`);
    const ran = batch.started_at
      ? ((batch.finished_at ? new Date(batch.finished_at) : new Date()) - new Date(batch.started_at)) / 1000
      : null;
    const u = batch.usage;
    const facts = [
      ["Model", `${batch.model} (${batch.provider})`],
      ["Mode", batch.mode || "direct"],
      ["Created", when(batch.created_at)],
      ["Started", when(batch.started_at)],
      ["Finished", when(batch.finished_at)],
      ["Running time", seconds(ran)],
      ["Tokens", `${number(u.total_tokens)} (${number(u.input_tokens)} in, ${number(u.output_tokens)} out)`],
      ["Waited for rate limits", seconds(batch.pacing ? batch.pacing.wait_s : 0)],
      ["Provider 429s", number(batch.pacing ? batch.pacing.provider_429s : 0)],
    ];
    if (batch.completion_window) facts.push(["Completion window", batch.completion_window]);
    if (batch.max_total_tokens) facts.push(["Token budget", number(batch.max_total_tokens)]);
    for (const [key, value] of Object.entries(batch.metadata || {})) facts.push([`metadata.${key}`, value]);
    fill(this.facts, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    if (batch.provider_batches && batch.provider_batches.length) {
      fill(this.providerBatches, h("h2", {}, "Provider batches"),
        h("table", {}, h("thead", {}, h("tr", {}, ["Id", "Status", "Done", "Failed", "Total"]
          .map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, batch.provider_batches.map((p) => h("tr", {},
          h("td", { class: "mono" }, p.id), h("td", {}, p.status),
          h("td", { class: "num" }, number(p.request_counts.completed)),
          h("td", { class: "num" }, number(p.request_counts.failed)),
          h("td", { class: "num" }, number(p.request_counts.total)))))));
    } else {
      this.providerBatches.replaceChildren();
    }
    fill(this.error, batch.error
      ? h("p", { class: "alert error" }, `${batch.error.type}: ${batch.error.message}`) : null);
    this.showActions(batch);
  }

  showActions(batch) {
    const final = FINAL.has(batch.status);
    const c = batch.request_counts;
    if (!this.actionEls) {
      const includeCancelled = h("input", { type: "checkbox", id: "retry-cancelled", name: "include_cancelled" });
      const includeExpired = h("input", { type: "checkbox", id: "retry-expired", name: "include_expired" });
      this.actionEls = {
        cancel: h("button", { type: "button", class: "danger", dataset: { action: "cancel" } }, "Cancel"),
        retry: h("button", { type: "button", dataset: { action: "retry" } }, "Retry failed"),
        remove: h("button", { type: "button", class: "danger", dataset: { action: "delete" } }, "Delete"),
        includeCancelled,
        includeExpired,
      };
      const a = this.actionEls;
      a.cancel.addEventListener("click", () => this.act("cancel"));
      a.retry.addEventListener("click", () => this.act("retry"));
      a.remove.addEventListener("click", () => this.act("delete"));
      const dl = (label, what) => {
        const button = h("button", { type: "button", class: "secondary" }, label);
        button.addEventListener("click", () => this.download(what));
        return button;
      };
      fill(this.actions,
        a.cancel,
        h("span", { class: "group" }, a.retry,
          h("label", {}, includeCancelled, " and cancelled"),
          h("label", {}, includeExpired, " and expired")),
        a.remove,
        h("span", { class: "group" }, "Download: ",
          dl("NDJSON", "ndjson"), dl("CSV", "csv"), dl("OpenAI output file", "openai")));
    }
    const a = this.actionEls;
    a.cancel.disabled = final || batch.status === "cancelling";
    a.retry.disabled = !final || c.failed + c.cancelled + c.expired === 0;
  }

  async act(action) {
    const questions = {
      cancel: "Cancel this batch? Items running may finish; no new item starts.",
      retry: "Run this batch's failed items again?",
      delete: "Delete this batch and all its results? This cannot be undone.",
    };
    if (!(await confirmed(questions[action]))) return;
    clearSay();
    try {
      if (action === "delete") {
        await call(this.path, { method: "DELETE" });
        location.assign("/ui");
        return;
      }
      let url = `${this.path}/${action}`;
      if (action === "retry") {
        const include = [];
        if (this.actionEls.includeCancelled.checked) include.push("cancelled");
        if (this.actionEls.includeExpired.checked) include.push("expired");
        if (include.length) url += `?include=${include.join(",")}`;
      }
      const response = await call(url, { method: "POST" });
      this.show(await response.json());
      say(action === "cancel" ? "Cancelling." : "Retrying.", "info");
      this.reload();
      this.follow();
    } catch (error) {
      this.failed(error);
    }
  }

  /** The items page again, in the background; its failure said on the page. */
  reload() {
    this.items.load().catch((error) => this.failed(error));
  }

  failed(error) {
    if (error instanceof Unauthorized) {
      window.dispatchEvent(new Event("promptbatch:unauthorized"));
      return;
    }
    if (error && error.name === "AbortError") return;
    say(error.message || String(error));
  }

  async download(what) {
    try {
      if (what === "openai") {
        const object = await getJSON(`/openai/v1/batches/${encodeURIComponent(this.id)}`);
        if (!object.output_file_id) {
          say("The OpenAI output file is made when the batch is final.");
          return;
        }
        const file = await call(`/openai/v1/files/${encodeURIComponent(object.output_file_id)}/content`);
        download(await file.blob(), `${this.id}_output.jsonl`);
        return;
      }
      const response = await call(`${this.path}/results`, { accept: "application/x-ndjson" });
      if (what === "ndjson") {
        download(await response.blob(), `${this.id}.ndjson`);
      } else {
        const text = await response.text();
        const items = text.split("\n").filter(Boolean).map((line) => JSON.parse(line));
        download(new Blob([toCsv(items)], { type: "text/csv" }), `${this.id}.csv`);
      }
    } catch (error) {
      this.failed(error);
    }
  }

  /** Live updates: the events stream (fetch, so the key goes along); polling when it keeps
   * failing. The first stream is read from the batch's start, so the chart has its history
   * (the last 10,000 items' finishes, as long as the API keeps them). A stream that ends
   * before the batch does is opened again after a pause that doubles with each failure. */
  async follow() {
    if (this.following || this.stopped) return;
    this.following = true;
    try {
      for (let failures = 0; failures < 6 && !this.stopped; ) {
        const before = this.lastEventId;
        try {
          for await (const message of events(this.id, {
            lastId: this.lastEventId || "0-0", signal: this.abort.signal,
          })) {
            this.lastEventId = message.id || this.lastEventId;
            if (message.event === "batch") {
              this.show(message.data);
              // a final batch's stream still replays its items' history, then ends
              if (FINAL.has(message.data.status)) this.reload();
            } else if (message.event === "items") {
              this.chart.record(message.data.data.map((item) => item.finished_at_ms));
              this.reloadSoon();
            }
          }
        } catch (error) {
          if (error instanceof Unauthorized || (error && error.name === "AbortError")) throw error;
          if (!(error instanceof TypeError) && !(error instanceof ApiError)) throw error;
        }
        if (this.stopped || (this.batch && FINAL.has(this.batch.status))) return;
        failures = this.lastEventId !== before ? 0 : failures + 1;
        await pause(Math.min(500 * 2 ** failures, 15_000) * (0.75 + Math.random() / 2));
      }
      await this.poll();
    } catch (error) {
      this.failed(error);
    } finally {
      this.following = false;
    }
  }

  /** The items page again within a second (once however many events ask meanwhile). A
   * filtered view, or one where the user has selected text, is left as it is. */
  reloadSoon() {
    if (this.refreshing || this.items.filtered()) return;
    this.refreshing = setTimeout(() => {
      this.refreshing = null;
      const selection = document.getSelection();
      if (selection && !selection.isCollapsed && this.items.el.contains(selection.anchorNode)) return;
      this.reload();
    }, 1000);
  }

  /** Polling, when the stream keeps failing: a failed poll is tried again, never the end. */
  async poll() {
    while (!this.stopped) {
      await pause(POLL_MS);
      if (this.stopped) return;
      try {
        this.show(await getJSON(this.path));
        if (!this.items.filtered()) await this.items.load();
        if (FINAL.has(this.batch.status)) return;
      } catch (error) {
        if (error instanceof Unauthorized) throw error;
      }
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.refreshing);
    this.abort.abort();
  }
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A dialog that asks to confirm: the browser's own. */
async function confirmed(question) {
  return window.confirm(question);
}

function toCsv(items) {
  const columns = ["index", "custom_id", "status", "output", "output_json", "refusal",
    "tool_calls", "embedding", "error_type", "error_message", "finish_reason", "input_tokens",
    "output_tokens", "total_tokens"];
  const json = (value) => (value === null || value === undefined ? "" : JSON.stringify(value));
  const cell = (value) => {
    const text = value === null || value === undefined ? "" : String(value);
    // a leading = + - @ would be a formula to a spreadsheet: quoted with a ' first
    const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
    return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
  };
  const lines = [columns.join(",")];
  for (const item of items) {
    const u = item.usage || {};
    lines.push([item.index, item.custom_id, item.status, item.output, json(item.output_json),
      item.refusal, json(item.tool_calls), json(item.embedding), item.error && item.error.type,
      item.error && item.error.message, item.finish_reason, u.input_tokens, u.output_tokens,
      u.total_tokens].map(cell).join(","));
  }
  return `${lines.join("\r\n")}\r\n`;
}

/** The items, a page at a time, filtered by status and searched by custom id. */
class ItemsTable {
  constructor(page) {
    this.page = page;
    this.cursors = [null]; // the `after` of each page visited
    this.at = 0;
    this.next = null;
    this.status = h("select", { id: "item-status", name: "status" },
      ITEM_STATUSES.map((s) => h("option", { value: s }, s)));
    this.search = h("input", { id: "item-search", name: "custom_id", type: "search", placeholder: "custom_id" });
    this.body = h("tbody");
    this.note = h("p", { class: "muted", "aria-live": "polite" });
    this.prev = h("button", { type: "button", class: "secondary" }, "← Previous");
    this.nextButton = h("button", { type: "button", class: "secondary" }, "Next →");
    this.pageLabel = h("span", { class: "muted", "aria-live": "polite" });
    this.el = h("section", { class: "card", "aria-labelledby": "items-title" },
      h("div", { class: "heading" },
        h("h2", { id: "items-title" }, "Items"),
        h("div", { class: "controls" },
          h("label", { for: "item-status" }, "Status"), this.status,
          h("label", { for: "item-search" }, "Search custom_id"), this.search)),
      h("div", { class: "scroll" },
        h("table", { class: "items" },
          h("thead", {}, h("tr", {}, ["#", "custom_id", "Status", "Output", "Error", "Finish", "Tokens"]
            .map((t) => h("th", { scope: "col" }, t)))),
          this.body)),
      this.note,
      h("div", { class: "pager" }, this.pageLabel, this.prev, this.nextButton));
    const restart = () => {
      this.cursors = [null];
      this.at = 0;
      this.load().catch((e) => page.failed(e));
    };
    this.status.addEventListener("change", restart);
    let typing = null;
    this.search.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(restart, 300);
    });
    this.prev.addEventListener("click", () => {
      if (this.at === 0) return;
      this.at -= 1;
      this.load().catch((e) => page.failed(e));
    });
    this.nextButton.addEventListener("click", () => {
      if (this.next === null) return;
      this.cursors[this.at + 1] = this.next;
      this.at += 1;
      this.load().catch((e) => page.failed(e));
    });
  }

  /** Whether a status filter or a search narrows the items. */
  filtered() {
    return this.status.value !== "all" || this.search.value.trim() !== "";
  }

  /** The current page, looked for until it holds a page of matches or the items end (a
   * filtered look at most `LOOKS` API pages at a time: "Next" goes on). */
  async load() {
    const serial = (this.serial = (this.serial || 0) + 1);
    this.prev.disabled = true;
    this.nextButton.disabled = true;
    const found = [];
    let after = this.cursors[this.at];
    let more = false;
    try {
      for (let look = 0; look < LOOKS && found.length < ITEMS; look += 1) {
        const query = new URLSearchParams({ limit: String(ITEMS - found.length) });
        if (after !== null) query.set("after", String(after));
        if (this.status.value !== "all") query.set("status", this.status.value);
        if (this.search.value.trim()) query.set("custom_id", this.search.value.trim());
        const list = await getJSON(`${this.page.path}/results?${query}`);
        found.push(...list.data);
        more = list.has_more;
        after = list.next_after;
        if (!more) break;
      }
    } catch (error) {
      if (serial === this.serial) {
        this.prev.disabled = this.at === 0;
        this.nextButton.disabled = this.next === null;
      }
      throw error;
    }
    if (serial !== this.serial) return; // a newer load is under way
    this.next = more ? after : null;
    fill(this.body, found.map(itemRow));
    const none = this.next !== null ? "None of the items looked through match: Next looks further."
      : "No items match.";
    setText(this.note, found.length ? "" : none);
    this.prev.disabled = this.at === 0;
    this.nextButton.disabled = this.next === null;
    setText(this.pageLabel, `Page ${this.at + 1}`);
  }
}

function itemRow(item) {
  let output = item.output;
  if (item.output_json !== null && item.output_json !== undefined) {
    output = JSON.stringify(item.output_json, null, 2);
  } else if (Array.isArray(item.embedding)) { // an embeddings batch: the vector, in short
    const head = item.embedding.slice(0, 4).map((v) => v.toFixed(4)).join(", ");
    output = `[${head}${item.embedding.length > 4 ? ", …" : ""}] (${item.embedding.length} numbers)`;
  }
  const u = item.usage;
  return h("tr", { dataset: { itemIndex: item.index } },
    h("td", { class: "num" }, item.index),
    h("td", { class: "mono" }, item.custom_id),
    h("td", { dataset: { col: "status" } }, badge(item.status)),
    h("td", { dataset: { col: "output" } },
      output ? h("pre", {}, output) : null,
      item.refusal ? h("p", { class: "muted" }, `refusal: ${item.refusal}`) : null,
      item.tool_calls ? h("pre", {}, JSON.stringify(item.tool_calls, null, 2)) : null),
    h("td", { dataset: { col: "error" } },
      item.error ? [h("strong", {}, item.error.type), h("div", {}, item.error.message)] : null),
    h("td", {}, item.finish_reason || ""),
    h("td", { class: "num" }, u ? number(u.total_tokens) : ""));
}
