// The playground: text in, the adapter's pipeline-shaped answer out, drawn by its shape.

import { api } from "./api.js";
import { errorNote, fmtNumber, fmtSeconds, h, refusedNote, replace, section } from "./dom.js";

const GENERATION = "generation";

// One input a line; a tab splits a line into text and text_pair.
export function parseInputs(text) {
  return text
    .split("\n")
    .map((line) => line.trimEnd())
    .filter((line) => line.trim())
    .map((line) => {
      const tab = line.indexOf("\t");
      return tab < 0 ? line : { text: line.slice(0, tab), text_pair: line.slice(tab + 1) };
    });
}

function scores(list) {
  return h(
    "div",
    { class: "scores" },
    list.map((item) =>
      h(
        "div",
        { class: "score-row" },
        h("span", { class: "score-label", title: item.label }, item.label),
        h("span", { class: "score-bar" }, h("span", { class: "fill", style: { width: `${Math.max(0, Math.min(1, item.score)) * 100}%` } })),
        h("span", { class: "num" }, fmtNumber(item.score, 3)),
      ),
    ),
  );
}

// The input text with each entity marked, built from the spans' offsets as text nodes.
function entities(text, list) {
  const out = [];
  let at = 0;
  const sorted = [...list].filter((e) => Number.isInteger(e.start) && Number.isInteger(e.end)).sort((a, b) => a.start - b.start);
  for (const entity of sorted) {
    if (entity.start < at) continue;
    out.push(text.slice(at, entity.start));
    out.push(h("mark", { title: `${entity.entity_group} ${fmtNumber(entity.score, 3)}` }, text.slice(entity.start, entity.end), h("sup", null, entity.entity_group)));
    at = entity.end;
  }
  out.push(text.slice(at));
  return h("p", { class: "entities" }, out);
}

function renderOutput(input, output) {
  const text = typeof input === "string" ? input : input.text;
  if (Array.isArray(output) && output.length && "entity_group" in output[0]) return entities(text, output);
  if (Array.isArray(output) && output.every((o) => o && "label" in o && "score" in o)) {
    return output.length ? scores(output) : h("p", { class: "muted" }, "no label over the threshold");
  }
  if (output && typeof output === "object" && "generated_text" in output) return h("pre", { class: "generated" }, output.generated_text);
  if (output && typeof output === "object" && "score" in output) return h("p", { class: "big" }, `score ${fmtNumber(output.score, 4)}`);
  return h("pre", null, JSON.stringify(output, null, 2));
}

function parameters(task, form) {
  const params = {};
  const number = (name) => {
    const field = form.querySelector(`[name="${name}"]`);
    return field && field.value !== "" ? Number(field.value) : null;
  };
  if (task === GENERATION) {
    for (const key of ["max_new_tokens", "temperature"]) if (number(key) !== null) params[key] = number(key);
  } else if (task === "classification" || task === "multi_label_classification") {
    if (number("top_k") !== null) params.top_k = number("top_k");
  }
  return params;
}

function paramFields(task) {
  if (task === GENERATION) {
    return [
      h("label", null, "max_new_tokens ", h("input", { name: "max_new_tokens", type: "number", min: 1, value: "32" })),
      h("label", null, "temperature ", h("input", { name: "temperature", type: "number", min: 0, step: "0.1", value: "0" })),
    ];
  }
  if (task === "classification" || task === "multi_label_classification") {
    return [h("label", null, "top_k ", h("input", { name: "top_k", type: "number", min: 1, placeholder: "1" }))];
  }
  return [];
}

async function submit(form, adapters, answer) {
  const name = form.querySelector("[name=adapter]").value;
  const item = adapters.find((a) => a.name === name) || {};
  const inputs = parseInputs(form.querySelector("[name=inputs]").value);
  if (!inputs.length) {
    replace(answer, h("p", { class: "error" }, "type at least one line of text"));
    return;
  }
  replace(answer, h("p", { class: "muted" }, "running…"));
  const started = performance.now();
  try {
    const body = { inputs, parameters: parameters(item.task, form) };
    const result = await api(`/v1/adapters/${encodeURIComponent(name)}/predict`, { method: "POST", body, scope: "predict" });
    const took = (performance.now() - started) / 1000;
    replace(
      answer,
      h("p", { class: "muted small" }, `${result.adapter} v${result.version} · ${fmtSeconds(took)}`),
      result.outputs.map((output, i) => h("div", { class: "answer", dataset: { index: String(i) } }, h("div", { class: "input" }, typeof inputs[i] === "string" ? inputs[i] : `${inputs[i].text} ⇥ ${inputs[i].text_pair}`), renderOutput(inputs[i], output))),
      h("details", null, h("summary", null, "response JSON"), h("pre", { id: "raw-answer" }, JSON.stringify(result, null, 2))),
    );
  } catch (error) {
    replace(answer, error.status === 403 ? refusedNote(error) : errorNote(error));
  }
}

// #/playground?adapter=NAME
export async function playgroundPage(root, ctx, query) {
  replace(root, h("p", { class: "muted" }, "loading…"));
  let adapters;
  try {
    adapters = (await api("/v1/adapters", { scope: "predict", signal: ctx.signal })).data;
  } catch (error) {
    if (!ctx.signal.aborted) replace(root, section("Playground", error.status === 403 ? refusedNote(error) : errorNote(error)));
    return;
  }
  if (!adapters.length) {
    replace(root, section("Playground", h("p", { class: "muted" }, "no adapters yet")));
    return;
  }
  const chosen = query.get("adapter");
  const select = h("select", { name: "adapter", id: "playground-adapter" }, adapters.map((a) => h("option", { value: a.name, selected: a.name === chosen }, `${a.name} (${a.task})`)));
  const params = h("span", { class: "params" });
  const answer = h("div", { id: "playground-answer" });
  const showParams = () => replace(params, paramFields((adapters.find((a) => a.name === select.value) || {}).task));
  select.addEventListener("change", showParams);
  showParams();
  const form = h(
    "form",
    { id: "playground-form", class: "playground" },
    h("div", { class: "row" }, h("label", null, "adapter ", select), params),
    h("textarea", { name: "inputs", rows: 5, placeholder: "one input a line; a tab separates text and text_pair" }),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Run")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(form, adapters, answer);
  });
  replace(root, section("Playground", form, answer));
}
