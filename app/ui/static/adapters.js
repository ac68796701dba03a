// Adapters: the table on the overview and one adapter's page with every version's lineage.

import { ApiError, api, refused } from "./api.js";
import { badge, errorNote, fmtBytes, fmtNumber, fmtTime, h, numericEntries, refusedNote, replace, section, table } from "./dom.js";

const details = new Map(); // "name@version" -> GET /v1/adapters/{name}, fetched once per version

async function detailsOf(item) {
  const key = `${item.name}@${item.latest_version}`;
  if (!details.has(key)) {
    details.set(key, api(`/v1/adapters/${encodeURIComponent(item.name)}`, { scope: "predict" }).catch((error) => {
      details.delete(key);
      throw error;
    }));
  }
  return details.get(key);
}

function labelChips(labels) {
  const list = labels || [];
  const shown = list.slice(0, 5).map((label) => h("span", { class: "chip" }, label));
  if (list.length > 5) shown.push(h("span", { class: "muted small" }, ` +${list.length - 5}`));
  return shown.length ? shown : h("span", { class: "muted" }, "–");
}

function metricsText(metrics, limit = 2) {
  const entries = numericEntries(metrics).slice(0, limit);
  if (!entries.length) return h("span", { class: "muted" }, "–");
  return entries.map(([key, value]) => h("span", { class: "metric" }, `${key} ${fmtNumber(value, 3)}`));
}

// A pin toggle; disabled with the reason once a 403 showed this key lacks `manage`.
function pinButton(item, onChange) {
  const button = h("button", { class: item.pinned ? "pin on" : "pin", type: "button", dataset: { pin: item.name } }, item.pinned ? "pinned" : "pin");
  const deny = () => {
    button.disabled = true;
    button.title = refused.get("manage") || "";
  };
  if (refused.has("manage")) deny();
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`/v1/adapters/${encodeURIComponent(item.name)}`, { method: "PATCH", body: { pinned: !item.pinned }, scope: "manage" });
      onChange();
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) deny();
      else {
        button.disabled = false;
        button.title = error.message;
      }
    }
  });
  return button;
}

function adapterRow(item, refresh) {
  const versions = h("span", null, `v${item.latest_version}`);
  const metrics = h("span", { class: "muted" }, "…");
  const row = h(
    "tr",
    { id: `adapter-${item.name}`, dataset: { adapter: item.name } },
    h("td", null, h("a", { href: `#/adapters/${encodeURIComponent(item.name)}` }, item.name)),
    h("td", null, versions),
    h("td", null, item.method || "–"),
    h("td", null, item.task || "–"),
    h("td", { class: "labels" }, labelChips(item.labels)),
    h("td", { class: "num" }, fmtBytes(item.size_bytes)),
    h("td", null, badge(item.resident || "disk")),
    h("td", null, pinButton(item, refresh)),
    h("td", null, metrics),
    h("td", null, h("a", { href: `#/playground?adapter=${encodeURIComponent(item.name)}` }, "try")),
  );
  detailsOf(item)
    .then((info) => {
      const count = (info.versions || []).length;
      replace(versions, `v${item.latest_version}`, h("span", { class: "muted small" }, ` of ${count}`));
      const latest = (info.versions || []).find((v) => v.version === item.latest_version) || {};
      replace(metrics, metricsText(latest.metrics));
    })
    .catch(() => replace(metrics, "–"));
  return row;
}

// The adapters card of the overview; `refresh()` re-reads the list.
export function adaptersCard(ctx) {
  const body = h("div", null, h("p", { class: "muted" }, "loading…"));
  const refresh = async () => {
    try {
      const { data } = await api("/v1/adapters", { scope: "predict", signal: ctx.signal });
      const columns = ["name", "version", "method", "task", "labels", "size", "residency", "pinned", "metrics", ""];
      replace(body, table(columns, data.map((item) => adapterRow(item, refresh)), { empty: "no adapters yet: upload one or start a training job", id: "adapters" }));
    } catch (error) {
      if (ctx.signal.aborted) return;
      replace(body, error.status === 403 ? refusedNote(error) : errorNote(error));
    }
  };
  refresh();
  ctx.every(5000, refresh);
  return section("Adapters", body);
}

function link(href, text) {
  return h("a", { href }, text);
}

function lineageCell(meta) {
  const lineage = meta.lineage || {};
  const parts = [h("div", null, badge(lineage.source || "upload", "source"))];
  if (lineage.job_id) {
    parts.push(h("div", null, "job ", refused.has("train") ? lineage.job_id : link(`#/jobs/${encodeURIComponent(lineage.job_id)}`, lineage.job_id)));
  }
  if (lineage.training_data) parts.push(h("div", null, `training data ${lineage.training_data}`));
  if (lineage.validation_data) parts.push(h("div", null, `validation data ${lineage.validation_data}`));
  if (lineage.examples) parts.push(h("div", null, `${lineage.examples} inline examples`));
  const parent = lineage.parent ?? meta.parent;
  if (parent) {
    const name = typeof parent === "object" ? parent.adapter || parent.name : String(parent);
    const version = typeof parent === "object" && parent.version ? ` v${parent.version}` : "";
    parts.push(h("div", null, "parent ", name ? link(`#/adapters/${encodeURIComponent(name)}`, `${name}${version}`) : JSON.stringify(parent)));
  }
  const rows = meta.training && meta.training.rows;
  if (rows && rows.train_rows) parts.push(h("div", { class: "muted small" }, `${rows.train_rows} train / ${rows.validation_rows ?? "?"} validation rows`));
  return parts;
}

function hyperparametersCell(hp) {
  const entries = Object.entries(hp || {}).filter(([, v]) => v !== null && v !== undefined);
  if (!entries.length) return h("span", { class: "muted" }, "–");
  const summary = ["epochs", "learning_rate", "rank", "batch_size"].filter((k) => k in (hp || {})).map((k) => `${k} ${fmtNumber(hp[k], 3)}`).join(", ");
  return h(
    "details",
    null,
    h("summary", null, summary || `${entries.length} values`),
    h("dl", { class: "kv" }, entries.map(([k, v]) => [h("dt", null, k), h("dd", null, typeof v === "object" ? JSON.stringify(v) : String(v))])),
  );
}

function versionRow(meta) {
  return h(
    "tr",
    { dataset: { version: String(meta.version) } },
    h("td", null, `v${meta.version}`),
    h("td", null, fmtTime(meta.created_at)),
    h("td", null, `${meta.method || "–"}${meta.rank ? ` r${meta.rank}` : ""}`),
    h("td", { class: "num" }, fmtBytes(meta.size_bytes)),
    h("td", null, metricsText(meta.metrics, 6)),
    h("td", null, lineageCell(meta)),
    h("td", null, hyperparametersCell(meta.hyperparameters)),
  );
}

// #/adapters/NAME: summary, pin, every version with metrics, lineage and hyperparameters.
export async function adapterPage(root, ctx, name) {
  replace(root, h("p", { class: "muted" }, "loading…"));
  const load = async () => {
    let info;
    try {
      info = await api(`/v1/adapters/${encodeURIComponent(name)}`, { scope: "predict", signal: ctx.signal });
    } catch (error) {
      if (!ctx.signal.aborted) replace(root, section(name, error.status === 403 ? refusedNote(error) : errorNote(error)));
      return;
    }
    const versions = [...(info.versions || [])].sort((a, b) => b.version - a.version);
    replace(
      root,
      h(
        "section",
        { class: "card" },
        h("h2", null, info.name, " ", badge(info.resident || "disk"), " ", info.pinned ? badge("pinned") : null),
        h("p", null, `${info.task} · ${info.method} · latest v${info.latest_version} · ${fmtBytes(info.size_bytes)} · labels `, labelChips(info.labels)),
        h("div", { class: "row" }, pinButton(info, load), link(`#/playground?adapter=${encodeURIComponent(info.name)}`, "open in playground")),
      ),
      section("Versions and lineage", table(["version", "created", "method", "size", "metrics", "lineage", "hyperparameters"], versions.map(versionRow), { id: "versions" })),
    );
  };
  await load();
}
