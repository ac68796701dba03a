// Calls to the Switchyard API: the key from sessionStorage as a Bearer token, errors in the
// API's one shape turned into ApiError, and server-sent events read through fetch (an
// EventSource cannot send an Authorization header).

const KEY_NAME = "switchyard.api_key";

export class ApiError extends Error {
  constructor(status, code, message, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
  refused.clear();
}

export function clearKey() {
  sessionStorage.removeItem(KEY_NAME);
  refused.clear();
}

// Scopes a 403 told us this key lacks: scope -> the server's message. Views hide or disable
// what needs them; a new key starts afresh.
export const refused = new Map();

const listeners = new Set();

// fn(error) runs on every 401, so the page can ask for a key.
export function onUnauthorized(fn) {
  listeners.add(fn);
}

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function toError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const err = body && body.error ? body.error : {};
  return new ApiError(
    response.status,
    err.code || `http_${response.status}`,
    err.message || response.statusText || "request failed",
    err.param ?? null,
  );
}

function note(error, scope) {
  if (error.status === 401) listeners.forEach((fn) => fn(error));
  if (error.status === 403 && scope && error.code === "insufficient_scope") {
    refused.set(scope, error.message);
  }
}

// JSON call. `scope` names the scope the endpoint needs, so a 403 can be remembered.
export async function api(path, { method = "GET", body, scope, signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await toError(response);
    note(error, scope);
    throw error;
  }
  return response.json();
}

function parseBlock(block) {
  const event = { id: null, event: "message", data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") data.push(value);
    else if (field === "id") event.id = value;
    else if (field === "event") event.event = value;
  }
  if (!data.length) return null;
  event.data = data.join("\n");
  return event;
}

// Server-sent events of `path` as parsed JSON payloads, resuming after the last id when the
// connection drops; returns when the server ends the stream (the job is over).
export async function* streamEvents(path, { signal, scope, after = 0 } = {}) {
  let last = after;
  let failures = 0;
  while (!signal || !signal.aborted) {
    const sep = path.includes("?") ? "&" : "?";
    let response;
    try {
      response = await fetch(`${path}${sep}after=${last}`, { headers: headers({ Accept: "text/event-stream" }), signal });
    } catch (error) {
      if (signal && signal.aborted) return;
      if (++failures > 5) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1000 * failures));
      continue;
    }
    if (!response.ok) {
      const error = await toError(response);
      note(error, scope);
      throw error;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const parsed = parseBlock(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!parsed) continue;
          const item = JSON.parse(parsed.data);
          if (typeof item.id === "number") last = item.id;
          failures = 0;
          yield item;
        }
      }
    } catch (error) {
      if (signal && signal.aborted) return;
      // A dropped connection: reconnect after a pause and continue after the last id.
      if (++failures > 5) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1000 * failures));
    }
  }
}
