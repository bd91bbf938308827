// runledger's built-in dashboard: plain JavaScript over the JSON API, nothing loaded from
// elsewhere. Every figure on the page is a field of an API answer, formatted; the
// `data-*` attributes carry the raw values so that tests (and curious users) can compare.
"use strict";

const $ = (sel) => document.querySelector(sel);
const main = $("#main");
const esc = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const usd = (v) => (v == null ? "–" : "$" + Number(v).toFixed(Math.abs(v) < 1 ? 4 : 2).replace(/\B(?=(\d{3})+(?!\d))(?=.*\.)/g, ","));
const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1) + "%");
const num = (v) => (v == null ? "–" : Number(v).toLocaleString("en-US"));
const ms = (v) => (v == null ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");

// ---- sign-in: ?token= once, then session storage --------------------------------------
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  sessionStorage.setItem("runledger.token", params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
const token = () => sessionStorage.getItem("runledger.token");

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const response = await fetch(path, { headers: token() ? { Authorization: "Bearer " + token() } : {} });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new ApiError(response.status, (body && body.error) || response.statusText);
  return body;
}

function signIn(message) {
  $("#signin-error").textContent = message || "";
  const dialog = $("#signin");
  if (!dialog.open) dialog.showModal();
  document.body.dataset.state = "signin";
}
$("#signin-form").addEventListener("submit", () => {
  sessionStorage.setItem("runledger.token", $("#token-input").value.trim());
  route();
});
$("#signout").addEventListener("click", () => { sessionStorage.removeItem("runledger.token"); signIn(); });

// ---- the window: explicit ?from=&to=, else the last N hours from the hour ---------------
function windowQuery() {
  if (params.has("from")) {
    const q = new URLSearchParams({ from: params.get("from") });
    if (params.has("to")) q.set("to", params.get("to"));
    return q.toString();
  }
  const hours = Number($("#window").value);
  const hour = new Date(); hour.setUTCMinutes(0, 0, 0);
  return "from=" + new Date(hour.getTime() - hours * 3600e3).toISOString().replace(".000Z", "Z");
}
$("#window").addEventListener("change", () => route());

// ---- charts: small SVGs drawn from the data -------------------------------------------
function barsVertical(rows, { value, label, height = 180, cls = () => "bar" }) {
  if (!rows.length) return `<div class="empty">No data in this window.</div>`;
  const w = Math.max(420, rows.length * 28), h = height, pad = 30;
  const max = Math.max(...rows.map(value), 1e-9);
  const bw = (w - pad) / rows.length;
  const bars = rows.map((r, i) => {
    const bh = (value(r) / max) * (h - 40);
    return `<rect class="${cls(r)}" x="${pad + i * bw + 2}" y="${h - 20 - bh}" width="${Math.max(bw - 4, 2)}" height="${bh}"><title>${esc(label(r))}: ${esc(usd(value(r)))}</title></rect>` +
      (rows.length <= 31 ? `<text x="${pad + i * bw + bw / 2}" y="${h - 6}" text-anchor="middle">${esc(label(r).slice(5))}</text>` : "");
  }).join("");
  return `<svg viewBox="0 0 ${w} ${h}" width="100%" height="${h}" role="img"><text x="0" y="12">${esc(usd(max))}</text>${bars}</svg>`;
}

function barsHorizontal(rows, { value, label, format, max, marker, cls = () => "bar" }) {
  if (!rows.length) return `<div class="empty">No data in this window.</div>`;
  const w = 460, rowH = 22, left = 150, h = rows.length * rowH + 10;
  const top = max ?? Math.max(...rows.map(value), 1e-9);
  const out = rows.map((r, i) => {
    const bw = Math.max(0, (value(r) / top) * (w - left - 90));
    return `<text x="0" y="${i * rowH + 16}">${esc(label(r))}</text>` +
      `<rect class="${cls(r)}" x="${left}" y="${i * rowH + 4}" width="${bw}" height="${rowH - 8}"></rect>` +
      `<text x="${left + bw + 6}" y="${i * rowH + 16}">${esc(format(value(r)))}</text>` +
      (marker != null ? `<line class="slo" x1="${left + (marker(r) / top) * (w - left - 90)}" x2="${left + (marker(r) / top) * (w - left - 90)}" y1="${i * rowH + 2}" y2="${i * rowH + rowH - 2}"></line>` : "");
  }).join("");
  return `<svg viewBox="0 0 ${w} ${h}" width="100%" height="${h}" role="img">${out}</svg>`;
}

const table = (headers, rows) =>
  `<table><thead><tr>${headers.map((h) => `<th class="${h.n ? "n" : ""}">${esc(h.t)}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>`;

// ---- views ----------------------------------------------------------------------------
async function overview() {
  const w = windowQuery();
  const [workflows, days, budgets, runaway] = await Promise.all([
    api(`/api/v1/workflows?${w}`),
    api(`/api/v1/cost?group_by=day&${w}`),
    api(`/api/v1/budgets`),
    api(`/api/v1/runs/runaway?${w}&limit=20`),
  ]);
  const named = workflows.workflows.filter((x) => x.workflow != null);
  const gates = await Promise.all(named.map((x) => api(`/api/v1/workflows/${encodeURIComponent(x.workflow)}/gates?${w}`)));
  const total = workflows.workflows.reduce((a, x) => a + x.total_cost_usd, 0);
  const runs = workflows.workflows.reduce((a, x) => a + x.runs, 0);
  const ok = workflows.workflows.reduce((a, x) => a + x.successful_runs, 0);
  const finished = workflows.workflows.reduce((a, x) => a + x.finished_runs, 0);
  if (!runs) {
    main.innerHTML = `<h1>Overview</h1><div class="card empty" id="empty">No runs between ${esc(workflows.from)} and ${esc(workflows.to)}.<br>Export OTLP traces to the collector (gRPC :4317, HTTP :4318/v1/traces), or run <code>runledger demo</code>.</div>`;
    return;
  }
  const slo = (name) => (gates.find((g) => g.workflow === name)?.gates.find((g) => g.name === "completion_rate")?.threshold) ?? 0.95;
  main.innerHTML = `
  <h1>Overview <span class="muted">${esc(workflows.from.slice(0, 16))} → ${esc(workflows.to.slice(0, 16))} UTC</span></h1>
  <div class="kpis">
    <div class="kpi"><div class="v" id="kpi-cost" data-usd="${total}">${usd(total)}</div><div class="l">spend</div></div>
    <div class="kpi"><div class="v" data-runs="${runs}">${num(runs)}</div><div class="l">runs</div></div>
    <div class="kpi"><div class="v">${finished ? usd(total / Math.max(ok, 1)) : "–"}</div><div class="l">cost per successful run</div></div>
    <div class="kpi"><div class="v">${pct(finished ? ok / finished : null)}</div><div class="l">completion</div></div>
  </div>
  <div class="grid">
    <div class="card"><h2>Spend per day</h2>${barsVertical(days.rows.filter((r) => r.key), { value: (r) => r.cost_usd, label: (r) => r.key })}</div>
    <div class="card"><h2>Cost per successful run, by workflow</h2>${barsHorizontal(named, { value: (r) => r.cost_per_success_usd ?? 0, label: (r) => r.workflow, format: usd })}</div>
    <div class="card"><h2>Completion against its SLO</h2>${barsHorizontal(named, { value: (r) => r.completion_rate ?? 0, label: (r) => r.workflow, format: pct, max: 1, marker: (r) => slo(r.workflow), cls: (r) => ((r.completion_rate ?? 0) >= slo(r.workflow) ? "bar ok" : "bar bad") })}</div>
    <div class="card"><h2>Graduation gates</h2>${table(
      [{ t: "workflow" }, { t: "ready" }, ...["completion_rate", "critical_error_rate", "cost_per_success", "trace_coverage"].map((t) => ({ t }))],
      gates.map((g) => `<tr data-gate-workflow="${esc(g.workflow)}" data-ready="${g.ready}"><td>${esc(g.workflow)}</td><td class="${g.ready ? "pass" : "fail"}">${g.ready ? "ready" : "not yet"}</td>${["completion_rate", "critical_error_rate", "cost_per_success_usd", "trace_coverage"].map((n) => {
        const gate = g.gates.find((x) => x.name === n) || g.gates.find((x) => x.name.startsWith(n.split("_usd")[0]));
        return gate ? `<td class="${gate.pass ? "pass" : "fail"}" title="${esc(gate.reason || "")}">${gate.pass ? "✓" : "✗"} ${n.includes("cost") ? usd(gate.value) : pct(gate.value)}</td>` : "<td>–</td>";
      }).join("")}</tr>`))}</div>
    <div class="card"><h2>Budgets</h2>${budgets.budgets.length ? table(
      [{ t: "budget" }, { t: "period" }, { t: "spend", n: 1 }, { t: "budget", n: 1 }, { t: "burn" }, { t: "projected", n: 1 }, { t: "status" }],
      budgets.budgets.map((b) => `<tr data-budget="${esc(b.name)}"><td>${esc(b.name)}</td><td>${esc(b.period)}</td><td class="n">${usd(b.spend_usd)}</td><td class="n">${usd(b.budget_usd)}</td><td><span class="meter"><i class="${b.status}" style="width:${Math.min(100, 100 * b.burn)}%"></i></span> ${pct(b.burn)}</td><td class="n">${usd(b.projected_usd)}</td><td class="${b.status === "ok" ? "pass" : b.status === "over" ? "fail" : "risk"}">${esc(b.status.replace("_", " "))}</td></tr>`))
      : `<div class="empty">No budgets configured. Add <code>[[budgets]]</code> to the config file.</div>`}</div>
    <div class="card"><h2>Runaway runs</h2>${runaway.runs.length ? table(
      [{ t: "run" }, { t: "workflow" }, { t: "cost", n: 1 }, { t: "tool calls", n: 1 }, { t: "retries", n: 1 }, { t: "why" }],
      runaway.runs.map((r) => `<tr><td><a href="#run/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td><td>${esc(r.workflow)}</td><td class="n">${usd(r.cost_usd)}</td><td class="n">${num(r.tool_calls)}</td><td class="n">${num(r.retries)}</td><td>${esc(r.reasons.join("; "))}</td></tr>`))
      : `<div class="empty">No run far above its workflow's norm.</div>`}</div>
  </div>
  <div class="card" style="margin-top:16px"><h2>Workflows</h2>${workflowTable(workflows.workflows)}</div>`;
}

function workflowTable(rows) {
  return table(
    [{ t: "workflow" }, { t: "runs", n: 1 }, { t: "completion", n: 1 }, { t: "cost", n: 1 }, { t: "cost / success", n: 1 }, { t: "retry rate", n: 1 }, { t: "tool errors", n: 1 }, { t: "critical errors", n: 1 }, { t: "coverage", n: 1 }, { t: "unpriced spans", n: 1 }],
    rows.map((x) => `<tr data-workflow="${esc(x.workflow ?? "")}" data-cost="${x.total_cost_usd}" data-runs="${x.runs}"><td>${esc(x.workflow ?? "(none)")}</td><td class="n">${num(x.runs)}</td><td class="n">${pct(x.completion_rate)}</td><td class="n cost">${usd(x.total_cost_usd)}</td><td class="n">${usd(x.cost_per_success_usd)}</td><td class="n">${pct(x.retry_rate)}</td><td class="n">${pct(x.tool_error_rate)}</td><td class="n">${pct(x.critical_error_rate)}</td><td class="n">${pct(x.trace_coverage)}</td><td class="n">${num(x.unpriced_spans)}</td></tr>`),
  );
}

async function workflowsView() {
  const data = await api(`/api/v1/workflows?${windowQuery()}`);
  main.innerHTML = `<h1>Workflows</h1><div class="card">${data.workflows.length ? workflowTable(data.workflows) : `<div class="empty">No runs in this window.</div>`}</div>`;
}

async function toolsView() {
  const data = await api(`/api/v1/tools?${windowQuery()}`);
  main.innerHTML = `<h1>Tools</h1><div class="grid"><div class="card"><h2>Error rate by tool</h2>${barsHorizontal(data.tools.slice(0, 20), { value: (r) => r.error_rate ?? 0, label: (r) => r.tool, format: pct, max: Math.max(0.05, ...data.tools.map((r) => r.error_rate ?? 0)), cls: () => "bar bad" })}</div></div>
  <div class="card" style="margin-top:16px">${data.tools.length ? table(
    [{ t: "tool" }, { t: "calls", n: 1 }, { t: "errors", n: 1 }, { t: "error rate", n: 1 }, { t: "retries", n: 1 }, { t: "writes", n: 1 }, { t: "p50", n: 1 }, { t: "p95", n: 1 }, { t: "p99", n: 1 }, { t: "cost", n: 1 }],
    data.tools.map((t) => `<tr data-tool="${esc(t.tool)}"><td>${esc(t.tool)}</td><td class="n">${num(t.calls)}</td><td class="n">${num(t.errors)}</td><td class="n">${pct(t.error_rate)}</td><td class="n">${num(t.retries)}</td><td class="n">${num(t.write_actions)}</td><td class="n">${ms(t.latency_ms_p50)}</td><td class="n">${ms(t.latency_ms_p95)}</td><td class="n">${ms(t.latency_ms_p99)}</td><td class="n">${usd(t.cost_usd)}</td></tr>`))
    : `<div class="empty">No tool calls in this window.</div>`}</div>`;
}

async function costView(group = "agent") {
  const w = windowQuery();
  const data = await api(`/api/v1/cost?group_by=${group}&${w}`);
  const csv = `/api/v1/cost?group_by=${group}&${w}&format=csv&token=${encodeURIComponent(token() || "")}`;
  main.innerHTML = `<h1>Cost breakdown</h1>
  <form class="search" id="cost-form"><label>by <select id="group">${["agent", "model", "customer", "workflow", "day"].map((g) => `<option ${g === group ? "selected" : ""}>${g}</option>`).join("")}</select></label>
  <a href="${esc(csv)}" download="runledger-cost-${group}.csv">Download CSV</a></form>
  <div class="grid"><div class="card"><h2>Cost by ${esc(group)}</h2>${barsHorizontal(data.rows.slice(0, 25), { value: (r) => r.cost_usd, label: (r) => r.key ?? "(none)", format: usd })}</div></div>
  <div class="card" style="margin-top:16px">${data.rows.length ? table(
    [{ t: group }, { t: "cost", n: 1 }, { t: "inference", n: 1 }, { t: "tool", n: 1 }, { t: "review", n: 1 }, { t: "runs", n: 1 }, { t: "cost / success", n: 1 }, { t: "input tokens", n: 1 }, { t: "output tokens", n: 1 }],
    data.rows.map((r) => `<tr data-key="${esc(r.key ?? "")}" data-cost="${r.cost_usd}"><td>${esc(r.key ?? "(none)")}</td><td class="n">${usd(r.cost_usd)}</td><td class="n">${usd(r.cost_inference_usd)}</td><td class="n">${usd(r.cost_tool_usd)}</td><td class="n">${usd(r.cost_review_usd)}</td><td class="n">${num(r.runs)}</td><td class="n">${usd(r.cost_per_success_usd)}</td><td class="n">${num(r.input_tokens)}</td><td class="n">${num(r.output_tokens)}</td></tr>`))
    : `<div class="empty">No cost in this window.</div>`}</div>`;
  $("#group").addEventListener("change", (e) => costView(e.target.value));
}

async function runsView(query = {}) {
  const form = `<form class="search" id="run-search">
    <input name="run_id" placeholder="run id" value="${esc(query.run_id || "")}">
    <input name="ref" placeholder="external ref (refund, ticket…)" value="${esc(query.ref || "")}">
    <input name="workflow" placeholder="workflow" value="${esc(query.workflow || "")}">
    <select name="outcome"><option value="">any outcome</option>${["success", "failure", "escalated", "none"].map((o) => `<option ${query.outcome === o ? "selected" : ""}>${o}</option>`).join("")}</select>
    <button>Search</button></form>`;
  if (query.run_id) { location.hash = "#run/" + encodeURIComponent(query.run_id); return; }
  const q = new URLSearchParams({ limit: "50" });
  for (const k of ["ref", "workflow", "outcome", "cursor"]) if (query[k]) q.set(k, query[k]);
  if (!query.ref) for (const [k, v] of new URLSearchParams(windowQuery())) q.set(k, v);
  const page = await api(`/api/v1/runs?${q}`);
  main.innerHTML = `<h1>Run explorer</h1>${form}<div class="card">${page.runs.length ? table(
    [{ t: "run" }, { t: "workflow" }, { t: "agent" }, { t: "outcome" }, { t: "start" }, { t: "duration", n: 1 }, { t: "cost", n: 1 }, { t: "spans", n: 1 }],
    page.runs.map((r) => `<tr data-run="${esc(r.run_id)}"><td><a href="#run/${encodeURIComponent(r.run_id)}">${esc(r.run_id)}</a></td><td>${esc(r.workflow)}</td><td>${esc(r.agent)}</td><td class="${r.outcome === "success" ? "pass" : r.outcome ? "fail" : "muted"}">${esc(r.outcome ?? "–")}</td><td>${esc(r.start_time.slice(0, 19).replace("T", " "))}</td><td class="n">${ms(r.duration_ms)}</td><td class="n">${usd(r.cost_usd)}</td><td class="n">${num(r.spans)}</td></tr>`))
    + (page.next_cursor ? `<p><a href="#" id="next">next page →</a></p>` : "")
    : `<div class="empty">No runs match.</div>`}</div>`;
  $("#run-search").addEventListener("submit", (e) => {
    e.preventDefault();
    runsView(Object.fromEntries([...new FormData(e.target)].filter(([, v]) => v)));
  });
  if (page.next_cursor) $("#next").addEventListener("click", (e) => { e.preventDefault(); runsView({ ...query, cursor: page.next_cursor }); });
}

async function runView(id) {
  let run;
  try { run = await api(`/api/v1/runs/${encodeURIComponent(id)}`); } catch (e) {
    if (e.status === 404) { main.innerHTML = `<h1>Run ${esc(id)}</h1><div class="card empty">No run with this id in the lake.</div>`; return; }
    throw e;
  }
  const start = Date.parse(run.start_time), total = Math.max(run.duration_ms, 1e-3);
  main.innerHTML = `<h1>Run ${esc(run.run_id)}</h1>
  <div class="kpis">
    <div class="kpi"><div class="v">${esc(run.workflow ?? "–")}</div><div class="l">workflow · ${esc(run.agent ?? "")}</div></div>
    <div class="kpi"><div class="v ${run.outcome === "success" ? "pass" : "fail"}">${esc(run.outcome ?? "no root")}</div><div class="l">outcome</div></div>
    <div class="kpi"><div class="v" data-usd="${run.cost_usd}">${usd(run.cost_usd)}</div><div class="l">inference ${usd(run.cost.inference)} · tool ${usd(run.cost.tool)} · review ${usd(run.cost.review)}</div></div>
    <div class="kpi"><div class="v">${ms(run.duration_ms)}</div><div class="l">${esc(run.start_time)}</div></div>
    <div class="kpi"><div class="v">${run.spans.length}</div><div class="l">spans · ${run.coverage.root ? "root present" : "root missing"} · ${run.coverage.orphans} orphans</div></div>
  </div>
  <div class="card">${table(
    [{ t: "span" }, { t: "duration", n: 1 }, { t: "cost", n: 1 }, { t: "status" }, { t: "ref" }, { t: "waterfall" }],
    run.spans.map((s) => {
      const left = (100 * (Date.parse(s.start_time) - start)) / total, width = (100 * s.duration_ms) / total;
      const failed = s.status === "error" || s.error_type;
      return `<tr data-span="${esc(s.span_id)}"><td style="padding-left:${8 + 16 * s.depth}px">${s.orphan ? "? " : ""}${failed ? '<span class="fail">✗</span> ' : ""}${s.retry_attempt > 0 ? `↻${s.retry_attempt} ` : ""}${esc(s.tool_name ? "tool " + s.tool_name : s.name)}${s.side_effect === "write" ? " <b>[write]</b>" : ""}</td>
      <td class="n">${ms(s.duration_ms)}</td><td class="n">${s.cost_usd == null ? "" : usd(s.cost_usd)}</td><td class="${failed ? "fail" : ""}">${esc(s.error_type || s.status)}</td><td>${esc(s.external_ref || "")}</td>
      <td><div class="wf"><i class="${failed ? "err" : ""}" style="left:${Math.min(left, 99.5)}%;width:${Math.max(Math.min(width, 100 - left), 0.5)}%"></i></div></td></tr>`;
    }))}</div>`;
}

// ---- routing ----------------------------------------------------------------------------
async function route() {
  if (!token()) return signIn();
  const [view, arg] = (location.hash.slice(1) || "overview").split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === (view === "run" ? "runs" : view)));
  document.body.dataset.state = "loading";
  try {
    const who = await api("/api/v1/whoami");
    $("#who").textContent = `${who.name} (${who.role})`;
    if ($("#signin").open) $("#signin").close();
    if (view === "workflows") await workflowsView();
    else if (view === "tools") await toolsView();
    else if (view === "cost") await costView();
    else if (view === "runs") await runsView();
    else if (view === "run") await runView(decodeURIComponent(arg || ""));
    else await overview();
    document.body.dataset.state = "ready";
  } catch (e) {
    if (e.status === 401) return signIn("That token was not accepted: " + e.message);
    main.innerHTML = `<div class="card error" id="error">${e.status === 403 ? "Your role cannot see this view: " : "Something went wrong: "}${esc(e.message)}</div>`;
    document.body.dataset.state = "error";
  }
}
window.addEventListener("hashchange", route);
route();
