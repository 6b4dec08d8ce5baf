// The status strip: /ready's checks, and per backend its instances against max_instances and the
// fill of its warm pool.

import { ApiError, readiness } from "./api.js";
import { byId, el } from "./dom.js";

function backendLine(backend) {
  const held = backend.max_instances === null ? `${backend.instances}` : `${backend.instances} of ${backend.max_instances}`;
  const parts = [`${held} ${backend.instances === 1 && backend.max_instances === null ? "instance" : "instances"}`];
  if (backend.pool_size) parts.push(`pool ${backend.pooled}/${backend.pool_size}`);
  const full = backend.max_instances !== null && backend.instances >= backend.max_instances;
  return el(
    "li",
    { className: full ? "backend full" : "backend" },
    el("strong", { text: backend.name }),
    ` ${parts.join(", ")}${full ? " (full)" : ""}`,
  );
}

export async function renderStatus(overview) {
  const strip = byId("status-strip");
  let ready;
  try {
    ready = await readiness();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    ready = { status: "failed", checks: {} };
  }
  const checks = Object.entries(ready.checks).map(([name, result]) =>
    el("li", { className: result === "ok" ? "check ok" : "check failed" }, `${name} ${result}`),
  );
  const ok = ready.status === "ok";
  strip.replaceChildren(
    el("p", { className: ok ? "badge ok" : "badge failed", text: ok ? "Ready" : "Not ready" }),
    el("ul", { className: "checks", "aria-label": "Readiness checks" }, ...checks),
    el("ul", { className: "backends", "aria-label": "Backends" }, ...(overview ? overview.backends.map(backendLine) : [])),
  );
}
