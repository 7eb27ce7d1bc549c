// Where an answer's time went: one bar of its stages against the server's budgets (/readyz budgets_ms).
import { el } from "./api.js";

export const STAGES = ["embed", "retrieve", "first_token", "generate"];
const LABELS = { embed: "embed", retrieve: "retrieve", first_token: "first token", generate: "generate" };

/** Each budgeted stage's own time in ms, as the server's budget check counts it: `timings_ms` has
 *  first_token from the request's start, but its budget runs from the start of generation. */
export function stageTimes(t) {
  const out = {};
  for (const name of ["embed", "retrieve", "generate", "total"]) if (name in t) out[name] = t[name];
  if ("generate" in t && "total" in t) {
    const generateStarted = t.total - t.generate;
    out.first_token = "first_token" in t ? t.first_token - generateStarted : t.generate;
  }
  return out;
}

const ms = (v) => `${Math.round(v)} ms`;

/** The bar: segments embed | retrieve | first token | rest of generation, scaled so the full width is
 *  the larger of the total time and the total budget (a line marks the budget); then one entry per
 *  stage, "its time / its budget", flagged when over. */
export function timingBar(timings, budgets) {
  const times = stageTimes(timings);
  const total = times.total || 0;
  const totalBudget = (budgets && budgets.total) || total;
  const scale = Math.max(total, totalBudget) || 1;
  const figure = el("figure", undefined, "timing");
  const bar = el("div", undefined, "bar");
  bar.setAttribute("role", "img");
  const segments = {
    embed: times.embed || 0,
    retrieve: times.retrieve || 0,
    first_token: Math.max(times.first_token || 0, 0),
    generate: Math.max((times.generate || 0) - (times.first_token || 0), 0),
  };
  for (const stage of STAGES) {
    const seg = el("span", undefined, `seg ${stage}`);
    seg.style.width = `${(100 * segments[stage]) / scale}%`;
    seg.title = `${LABELS[stage]}: ${ms(segments[stage])}`;
    bar.append(seg);
  }
  if (budgets && budgets.total) {
    const line = el("span", undefined, "budget-line");
    line.style.left = `${(100 * budgets.total) / scale}%`;
    line.title = `total budget ${ms(budgets.total)}`;
    bar.append(line);
  }
  const legend = el("ul", undefined, "legend");
  const summary = [];
  for (const stage of [...STAGES, "total"]) {
    if (!(stage in times)) continue;
    const budget = budgets ? budgets[stage] : undefined;
    const over = budget !== undefined && times[stage] > budget;
    const text = `${LABELS[stage] || stage} ${ms(times[stage])}${budget !== undefined ? ` / ${ms(budget)}` : ""}`;
    const item = el("li", text, `${stage}${over ? " over" : ""}`);
    item.dataset.stage = stage;
    if (over) item.append(el("strong", " over budget"));
    legend.append(item);
    summary.push(text);
  }
  bar.setAttribute("aria-label", `stage times: ${summary.join(", ")}`);
  figure.append(bar, legend);
  return figure;
}
