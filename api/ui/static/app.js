// The dashboard's entry: picks the view from the address, asks for a key when the API
// wants one and the tab holds none (or a refused one).
import { Unauthorized, forgetKey, heldKey, holdKey, keyRequired } from "./api.js";
import { fill, h } from "./dom.js";
import { batchView } from "./batch.js";
import { listView } from "./list.js";

const main = document.getElementById("main");
let stopView = () => {};

function route() {
  const match = location.pathname.match(/^\/ui\/batches\/([^/]+)\/?$/);
  if (match) return (el) => batchView(el, decodeURIComponent(match[1]));
  return (el) => listView(el);
}

async function start() {
  stopView();
  stopView = () => {};
  const forget = document.getElementById("forget-key");
  forget.hidden = !keyRequired() || !heldKey();
  if (keyRequired() && !heldKey()) {
    askForKey();
    return;
  }
  try {
    stopView = (await route()(main)) || (() => {});
  } catch (error) {
    if (error instanceof Unauthorized) {
      forgetKey();
      askForKey("That key was refused. Try another one.");
      return;
    }
    fill(main, h("p", { class: "alert error", role: "alert" }, String(error.message || error)));
  }
}

/** The key prompt. Submitting keeps the key in this tab's sessionStorage; the form never
 * submits anywhere, so the key is in no URL. */
function askForKey(problem) {
  const input = h("input", {
    id: "api-key", name: "api_key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false",
  });
  const form = h("form", { class: "card narrow", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "API key"),
    h("p", {}, "This service asks for a key. It is kept in this browser tab only and sent as " +
      "a Bearer header; closing the tab forgets it."),
    problem ? h("p", { class: "alert error", role: "alert" }, problem) : null,
    h("label", { for: "api-key" }, "Key"),
    input,
    h("button", { type: "submit" }, "Use this key"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    holdKey(key);
    start();
  });
  fill(main, form);
  input.focus();
}

document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  start();
});

// A view's own failure later on (a refused key while polling) comes back here.
window.addEventListener("promptbatch:unauthorized", () => {
  forgetKey();
  stopView();
  stopView = () => {};
  askForKey("The API refused the key. Enter it again.");
});

start();
