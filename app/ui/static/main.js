// The dashboard's entry: hash routes, the API key prompt, and the header.

import { adapterPage, adaptersCard } from "./adapters.js";
import { api, clearKey, getKey, onUnauthorized, refused, setKey } from "./api.js";
import { h, replace } from "./dom.js";
import { jobPage, jobsCard, jobsPage } from "./jobs.js";
import { metricsCard, metricsPage } from "./metrics.js";
import { playgroundPage } from "./playground.js";

const view = document.getElementById("view");
let current = null; // the context of the view on screen: its abort signal and timers

function newContext() {
  const controller = new AbortController();
  const timers = [];
  return {
    signal: controller.signal,
    every(ms, fn) {
      timers.push(setInterval(() => document.hidden || fn(), ms));
    },
    refreshNav,
    close() {
      controller.abort();
      timers.forEach(clearInterval);
    },
  };
}

// Hide the links a 403 showed this key may not follow.
function refreshNav() {
  for (const link of document.querySelectorAll("#nav [data-scope]")) {
    link.hidden = refused.has(link.dataset.scope);
  }
}

function overview(root, ctx) {
  const parts = [metricsCard(ctx), adaptersCard(ctx)];
  if (!refused.has("train")) parts.push(jobsCard(ctx));
  replace(root, ...parts);
}

function route() {
  if (current) current.close();
  current = newContext();
  const [path, search] = (location.hash.replace(/^#/, "") || "/").split("?");
  const query = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.nav === (parts[0] || "overview"));
  }
  refreshNav();
  if (parts[0] === "adapters" && parts[1]) return adapterPage(view, current, parts[1]);
  if (parts[0] === "jobs" && parts[1]) return jobPage(view, current, parts[1]);
  if (parts[0] === "jobs") return jobsPage(view, current);
  if (parts[0] === "playground") return playgroundPage(view, current, query);
  if (parts[0] === "metrics") return metricsPage(view, current);
  return overview(view, current);
}

function authBox(required) {
  const box = document.getElementById("auth");
  if (!required) return replace(box);
  if (!getKey()) return replace(box, h("button", { type: "button", onclick: () => askKey("Enter an API key.") }, "API key"));
  return replace(
    box,
    h("span", { class: "muted small" }, "key set "),
    h("button", { type: "button", id: "sign-out", onclick: () => { clearKey(); askKey("Signed out."); } }, "forget key"),
  );
}

function askKey(reason) {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-reason").textContent = reason;
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}

async function start() {
  document.getElementById("key-form").addEventListener("submit", () => {
    const input = document.getElementById("key-input");
    setKey(input.value.trim());
    input.value = "";
    boot();
  });
  onUnauthorized((error) => {
    authBox(true);
    askKey(getKey() ? `The key was refused: ${error.message}` : "This service needs an API key.");
  });
  window.addEventListener("hashchange", route);
  boot();
}

// Read the service info (any valid key), then draw the current route.
async function boot() {
  let info;
  try {
    info = await api("/v1/info", { scope: "any" });
  } catch (error) {
    if (error.status !== 401) replace(view, h("p", { class: "error" }, `cannot reach the service: ${error.message}`));
    return;
  }
  const base = info.base_model;
  replace(document.getElementById("base"), `${base.name} · ${base.kind} · ${base.device} · ${(base.parameters / 1e6).toFixed(1)} M parameters`);
  authBox(Boolean(getKey()));
  route();
}

start();
