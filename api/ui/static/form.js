// The new-batch form: prompts typed one a line, or a CSV (with a template over its
// columns), a JSONL of prompts, or an OpenAI Batch file; the batch's model and params.
import { Unauthorized, call } from "./api.js";
import { fill, h } from "./dom.js";

/** RFC 4180 CSV: quoted fields, "" for a quote, newlines inside quotes. Rows of strings. */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c === '"' && field === "") {
      quoted = true;
    } else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i += 1;
      row.push(field);
      field = "";
      if (row.length > 1 || row[0] !== "") rows.push(row);
      row = [];
    } else {
      field += c;
    }
  }
  row.push(field);
  if (row.length > 1 || row[0] !== "") rows.push(row);
  return rows;
}

/** A CSV's rows as objects keyed by its header row (a BOM before it dropped). */
export function csvRecords(text) {
  const [header, ...rows] = parseCsv(text.replace(/^\uFEFF/, ""));
  if (!header) throw new Error("The CSV file is empty.");
  return rows.map((row) => Object.fromEntries(header.map((name, i) => [name.trim(), row[i] ?? ""])));
}

function isOpenAIBatchLine(value) {
  return value !== null && typeof value === "object" && "body" in value && "url" in value;
}

/** What a file becomes: {json} for our own body, or {ndjson} for an OpenAI Batch file. */
export function fromFile(name, text, template) {
  const lower = name.toLowerCase();
  if (lower.endsWith(".csv")) {
    const records = csvRecords(text);
    if (template) return { json: { template, inputs: records } };
    if (records.length && "prompt" in records[0]) {
      return {
        json: {
          prompts: records.map((r) => (r.custom_id ? { custom_id: r.custom_id, prompt: r.prompt }
            : r.prompt)),
        },
      };
    }
    throw new Error("A CSV needs a template over its columns, or a column named prompt.");
  }
  const lines = text.split("\n").filter((line) => line.trim());
  if (lines.length === 0) throw new Error("The file holds no lines.");
  let first;
  try {
    first = JSON.parse(lines[0]);
  } catch {
    throw new Error("Line 1 of the file is not JSON.");
  }
  if (isOpenAIBatchLine(first)) return { ndjson: text };
  const prompts = lines.map((line, i) => {
    try {
      return JSON.parse(line);
    } catch {
      throw new Error(`Line ${i + 1} of the file is not JSON.`);
    }
  });
  return { json: { prompts } };
}

function field(label, control, hint) {
  const id = `nb-${control.name}`;
  control.id = id;
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("small", { class: "muted", id: `${id}-hint` }, hint) : null);
}

/** The form; submitting goes to the new batch's page. */
export function newBatchForm() {
  const prompts = h("textarea", { name: "prompts", rows: 6, spellcheck: "false" });
  const file = h("input", { type: "file", name: "file", accept: ".csv,.jsonl,.ndjson,.txt" });
  const template = h("textarea", { name: "template", rows: 2, spellcheck: "false" });
  const model = h("input", { name: "model", placeholder: "the service's default" });
  const system = h("textarea", { name: "system", rows: 2 });
  const concurrency = h("input", { name: "max_concurrency", type: "number", min: 1, step: 1 });
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1 });
  const maxTokens = h("input", { name: "max_tokens", type: "number", min: 1, step: 1 });
  const problem = h("div");
  const submit = h("button", { type: "submit" }, "Submit batch");
  const form = h("form", { class: "new-batch", novalidate: true },
    h("h2", {}, "New batch"),
    field("Prompts, one a line", prompts),
    field("Or a file", file, "CSV (with a template, or a prompt column), JSONL of prompts, " +
      "or an OpenAI Batch file"),
    field("Template over the CSV's columns", template, "For example: Review: {review}"),
    h("div", { class: "row" },
      field("Model", model),
      field("Max concurrency", concurrency),
      field("Temperature", temperature),
      field("Max tokens", maxTokens)),
    field("System prompt", system),
    problem,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(problem);
    submit.disabled = true;
    try {
      const request = await buildRequest();
      const response = request.ndjson !== undefined
        ? await call("/v1/batches", { method: "POST", body: request.ndjson, type: "application/x-ndjson" })
        : await call("/v1/batches", { method: "POST", json: request.json });
      const batch = await response.json();
      location.assign(`/ui/batches/${encodeURIComponent(batch.id)}`);
    } catch (error) {
      if (error instanceof Unauthorized) {
        window.dispatchEvent(new Event("promptbatch:unauthorized"));
        return;
      }
      fill(problem, h("p", { class: "alert error", role: "alert" }, error.message || String(error)));
      submit.disabled = false;
    }
  });

  async function buildRequest() {
    let request;
    if (file.files.length) {
      const chosen = file.files[0];
      request = fromFile(chosen.name, await chosen.text(), template.value.trim());
    } else {
      const lines = prompts.value.split("\n").map((l) => l.trim()).filter(Boolean);
      if (!lines.length) throw new Error("Type at least one prompt, or choose a file.");
      request = { json: { prompts: lines } };
    }
    if (request.json) {
      const params = {};
      if (temperature.value !== "") params.temperature = Number(temperature.value);
      if (maxTokens.value !== "") params.max_tokens = Number(maxTokens.value);
      if (Object.keys(params).length) request.json.params = params;
      if (model.value.trim()) request.json.model = model.value.trim();
      if (system.value.trim()) request.json.system = system.value.trim();
      if (concurrency.value !== "") request.json.max_concurrency = Number(concurrency.value);
    }
    return request;
  }
  return form;
}
