// Building the page from elements and text nodes only: every piece of data becomes a text node, so an adapter
// label like "<img onerror=...>" shows as those characters and never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function assign(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      // Through the CSSOM: the page's CSP refuses inline style attributes.
      Object.assign(node.style, value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "value" || key === "checked" || key === "disabled" || key === "selected") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  return node;
}

// h("a", {href: "#/x", class: "link"}, "text", child, [more]) -> an element.
export function h(tag, props, ...children) {
  return append(assign(document.createElement(tag), props), children);
}

export function svg(tag, props, ...children) {
  return append(assign(document.createElementNS(SVG_NS, tag), props), children);
}

export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function fmtNumber(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return Number(x.toPrecision(digits)).toString();
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s === 0) return "0 s";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

// The numeric entries of a metrics object, as [name, value] pairs.
export function numericEntries(obj, skip = []) {
  return Object.entries(obj || {}).filter(
    ([key, value]) => typeof value === "number" && Number.isFinite(value) && !skip.includes(key),
  );
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || String(text)}` }, text);
}

export function table(columns, rows, { empty = "nothing yet", id } = {}) {
  const head = h("thead", null, h("tr", null, columns.map((c) => h("th", null, c))));
  const body = h("tbody");
  if (!rows.length) body.append(h("tr", null, h("td", { colspan: columns.length, class: "muted" }, empty)));
  for (const row of rows) body.append(row instanceof Node ? row : h("tr", null, row.map((cell) => h("td", null, cell))));
  return h("table", { class: "grid", id }, head, body);
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), children);
}

// A message in place of something this key may not see, with the server's reason.
export function refusedNote(error) {
  return h("p", { class: "refused" }, `Not available with this key: ${error.message}`);
}

export function errorNote(error) {
  return h("p", { class: "error" }, error.code ? `${error.code}: ${error.message}` : String(error));
}
