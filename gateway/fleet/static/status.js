// The fleet status page: asks for a key, keeps it in sessionStorage (this tab
// only), and shows /api/fleet. Every value is written with textContent: agent
// names and versions come from clients and must never be parsed as HTML.
"use strict";

const KEY_ITEM = "otel-gateway.api-key";
const REFRESH_MS = 10000;
let timer = null;

const $ = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function ago(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// up: sending; silent: running but not heard from (alerts); stopped: stopped
// cleanly; retired: forgotten by an operator.
const STATUS_LABELS = {
  up: "🟢 up",
  silent: "🔴 silent",
  stopped: "⚪ stopped",
  retired: "⚫ retired",
};

// Over budget: its SDK folded series past its cardinality limit into one
// (otel.metric.overflow=true); the metric names say which.
function statusCell(agent) {
  const cell = element("td", STATUS_LABELS[agent.status] || agent.status, "status");
  const over = agent.over_budget || [];
  if (over.length > 0) {
    const mark = element("span", `⚠ over budget: ${over.join(", ")}`, "budget");
    mark.title = "Series past the agent's cardinality limit were merged into one.";
    cell.append(mark);
  }
  if (agent.clash) {
    const hosts = (agent.clash_hosts || []).join(", ") || "one host";
    const mark = element("span", `⚠ clash: two processes on ${hosts}`, "clash");
    mark.title =
      "Two live processes send under this service.instance.id: give each its own " +
      "(docs/operations.md, AgentIdentityClash).";
    cell.append(mark);
  }
  return cell;
}

function agentRow(agent) {
  const row = element("tr", undefined, agent.status);
  row.dataset.status = agent.status;
  row.dataset.instance = agent.instance;
  if ((agent.over_budget || []).length > 0) row.dataset.overBudget = agent.over_budget.join(",");
  if (agent.clash) row.dataset.clash = (agent.clash_hosts || []).join(",");
  row.append(
    statusCell(agent),
    element("td", agent.type),
    element("td", agent.service),
    element("td", agent.instance, "instance"),
    element("td", agent.host || "—", "host"),
    element("td", agent.version || "—", "version"),
  );
  const seen = element("td", ago(agent.seconds_since));
  seen.title = agent.last_seen;
  row.append(seen);
  return row;
}

function tenantSection(tenant) {
  const section = element("section", undefined, "tenant");
  section.dataset.tenant = tenant.tenant_id;
  const title = element("h2", tenant.tenant_id);
  const count = (status) => tenant.agents.filter((a) => a.status === status).length;
  const over = tenant.agents.filter((a) => (a.over_budget || []).length > 0).length;
  const clashes = tenant.agents.filter((a) => a.clash).length;
  title.append(
    element(
      "span",
      `${tenant.agents.length} agent(s): ${count("up")} up, ${count("silent")} silent, ` +
        `${count("stopped")} stopped, ${count("retired")} retired` +
        (over > 0 ? `, ${over} over budget` : "") +
        (clashes > 0 ? `, ${clashes} clashing` : ""),
      "counts",
    ),
  );
  section.append(title);
  if (tenant.agents.length === 0) {
    section.append(element("p", "No agent has reported yet.", "empty"));
    return section;
  }
  const table = element("table");
  const head = element("tr");
  for (const name of ["Status", "Type", "Service", "Instance", "Host", "Version", "Last seen"]) {
    head.append(element("th", name));
  }
  table.append(head);
  for (const agent of tenant.agents) table.append(agentRow(agent));
  section.append(table);
  return section;
}

// Usage (/api/usage): one row per tenant, each figure against its limit (named as
// in the limits file).
const USAGE_COLUMNS = [
  ["Tenant", ""],
  ["Active series", "of max_active_series"],
  ["Requests/s", "of rate_limit_requests_per_second (burst: rate_limit_burst)"],
  ["Data points/s", "forwarded; at most max_data_points_per_request per request"],
  ["Last hour", "requests finished, refused whole, data points forwarded"],
  ["Refusals, last hour", "by reason (docs/gateway.md, Errors); dropped data points by reason"],
  ["Agents", "by state"],
];

function counted(counts) {
  return Object.keys(counts || {}).map((name) => `${name}: ${counts[name]}`).join(", ");
}

function ofLimit(value, limit, extra) {
  return limit ? `${value} of ${limit}${extra || ""}` : `${value} (no limit)`;
}

function usageRow(tenant) {
  const limits = tenant.limits;
  const hour = tenant.last_hour;
  const agents = tenant.agents;
  const row = element("tr");
  row.dataset.usageTenant = tenant.tenant_id;
  const seriesOver = limits.max_active_series > 0 && tenant.active_series >= limits.max_active_series;
  const rate = limits.rate_limit_requests_per_second;
  const refusals = counted(hour.refusals);
  const dropped = counted(hour.dropped_data_points);
  row.append(
    element("td", tenant.tenant_id),
    element(
      "td",
      ofLimit(tenant.active_series, limits.max_active_series),
      seriesOver ? "over" : undefined,
    ),
    element(
      "td",
      ofLimit(tenant.requests_per_second, rate, ` (burst ${limits.rate_limit_burst})`),
      rate > 0 && tenant.requests_per_second > rate ? "over" : undefined,
    ),
    element("td", tenant.data_points_per_second),
    element(
      "td",
      `${hour.requests} requests, ${hour.refused} refused, ${hour.data_points} data points`,
    ),
    element(
      "td",
      (refusals || "none") + (dropped ? `; dropped data points: ${dropped}` : ""),
      refusals ? "over" : undefined,
    ),
    element(
      "td",
      `${agents.up} up, ${agents.silent} silent, ${agents.stopped} stopped, ` +
        `${agents.retired} retired`,
      agents.silent > 0 ? "over" : undefined,
    ),
  );
  return row;
}

function usageSection(usage) {
  const section = element("section", undefined, "usage");
  section.append(
    element("h2", `Usage · rates over the last ${usage.rate_window_seconds} s`),
  );
  const table = element("table");
  const head = element("tr");
  for (const [name, help] of USAGE_COLUMNS) {
    const cell = element("th", name);
    if (help) cell.title = help;
    head.append(cell);
  }
  table.append(head, ...usage.tenants.map(usageRow));
  section.append(table);
  return section;
}

async function refreshUsage(key) {
  let response;
  try {
    response = await fetch("/api/usage", {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    return;
  }
  if (!response.ok) return;
  const usage = await response.json();
  $("usage").replaceChildren(usageSection(usage));
}

function showLogin(message) {
  clearTimeout(timer);
  $("usage").replaceChildren();
  $("fleet").replaceChildren();
  $("session").hidden = true;
  $("login").hidden = false;
  $("message").textContent = message || "";
  $("key").focus();
}

async function refresh() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY_ITEM);
  if (!key) return showLogin();
  let response;
  try {
    response = await fetch("/api/fleet", {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    $("message").textContent = `The gateway does not answer (${error}); retrying.`;
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(KEY_ITEM);
    return showLogin("This key was not accepted: check it and try again.");
  }
  if (!response.ok) {
    $("message").textContent = `The gateway answered ${response.status}; retrying.`;
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  const fleet = await response.json();
  $("login").hidden = true;
  $("session").hidden = false;
  const store = fleet.state_store || {};
  // A replica that cannot reach the shared state store shows only what it knows.
  $("message").textContent = store.partial
    ? "Partial view: this gateway cannot reach its state store; agents seen only by other replicas may be missing or stale."
    : "";
  const replicas = store.replicas > 1 ? ` · ${store.replicas} gateway processes` : "";
  $("summary").textContent =
    `${fleet.scope} · silent after ${fleet.silent_after_seconds} s${replicas} · ${fleet.generated_at}`;
  $("fleet").replaceChildren(...fleet.tenants.map(tenantSection));
  await refreshUsage(key);
  document.body.dataset.loaded = "true";
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    refresh();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    showLogin();
  });
  refresh();
});
