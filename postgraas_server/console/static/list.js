// The list of databases: the server's filters and pages (limit, and the cursor of its Link header),
// polled without a reload; age and time left tick every second between polls. Rows are kept by id
// and updated in place, so a button with the keyboard's focus keeps it across refreshes.

import { ApiError, listInstances } from "./api.js";
import { byId, el, setText, show } from "./dom.js";
import { address, age, timeLeft } from "./format.js";

const POLL_MS = 5000;

export class InstanceList {
  constructor({ onExtend, onDelete }) {
    this.onExtend = onExtend;
    this.onDelete = onDelete;
    this.rows = new Map();
    // The cursors of the pages walked through; the last one is the page shown.
    this.cursors = [0];
    this.nextAfter = null;
    this.showOwner = false;
    this.loading = false;
    this.timers = [];
    this.filters = byId("filters");
    this.body = byId("instance-rows");
    this.filters.addEventListener("submit", (event) => event.preventDefault());
    this.filters.addEventListener("change", () => this.restart());
    // Typing in the name filter lists as one types, after a short pause.
    let typing = null;
    this.filters.addEventListener("input", (event) => {
      if (event.target.tagName !== "INPUT") return;
      clearTimeout(typing);
      typing = setTimeout(() => this.restart(), 300);
    });
    byId("page-first").addEventListener("click", () => this.go([0]));
    byId("page-previous").addEventListener("click", () => this.go(this.cursors.slice(0, -1)));
    byId("page-next").addEventListener("click", () => this.go([...this.cursors, this.nextAfter]));
  }

  // Admin tokens see every owner's: an owner column and filter.
  configure({ admin, backends }) {
    this.showOwner = admin;
    show(byId("filter-owner-field"), admin);
    const select = byId("filter-backend");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "any" }));
    for (const backend of backends) select.append(el("option", { value: backend.name, text: backend.name }));
    select.value = backends.some((b) => b.name === chosen) ? chosen : "";
    const head = byId("instance-head");
    const columns = ["Name", ...(admin ? ["Owner"] : []), "Backend", "Status", "Host:port", "Durability"];
    head.replaceChildren(...[...columns, "Age", "Time left", "Actions"].map((c) => el("th", { scope: "col", text: c })));
    this.body.replaceChildren();
    this.rows.clear();
  }

  start() {
    this.stop();
    this.refresh();
    this.timers.push(setInterval(() => document.hidden || this.refresh(), POLL_MS));
    this.timers.push(setInterval(() => this.tick(), 1000));
  }

  stop() {
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
  }

  restart() {
    this.go([0]);
  }

  go(cursors) {
    this.cursors = cursors.length ? cursors : [0];
    this.refresh();
  }

  currentFilters() {
    const form = this.filters.elements;
    return {
      limit: form.limit.value,
      name: form.name.value.trim(),
      status: form.status.value,
      backend: form.backend.value,
      owner: this.showOwner ? form.owner.value.trim() : "",
    };
  }

  async refresh() {
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    try {
      const { rows, nextAfter } = await listInstances(this.currentFilters(), this.cursors.at(-1));
      this.nextAfter = nextAfter;
      setText(byId("filter-message"), "");
      this.render(rows);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      // A 400 names the filter it refuses; the rest (server down) is said in the same place.
      const named = Object.entries(error.fields).map(([field, reason]) => `${field}: ${reason}`);
      setText(byId("filter-message"), named.length ? named.join("; ") : error.message);
    } finally {
      this.loading = false;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    }
  }

  render(instances) {
    const seen = new Set(instances.map((instance) => instance.id));
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.node.remove();
        this.rows.delete(id);
      }
    }
    instances.forEach((instance, index) => {
      const row = this.rows.get(instance.id) || this.makeRow(instance);
      row.instance = instance;
      this.fill(row);
      // Moved only when out of place: moving a node would take the focus from its buttons.
      if (this.body.children[index] !== row.node) this.body.insertBefore(row.node, this.body.children[index] || null);
    });
    show(byId("list-empty"), instances.length === 0);
    const page = this.cursors.length;
    byId("page-first").disabled = page === 1;
    byId("page-previous").disabled = page === 1;
    byId("page-next").disabled = this.nextAfter === null;
    setText(byId("page-info"), `Page ${page}`);
    this.tick();
  }

  makeRow(instance) {
    const cell = (label, ...children) => el("td", { "data-label": label }, ...children);
    const row = {
      instance,
      name: el("strong", { className: "name" }),
      login: el("span", { className: "sub" }),
      owner: el("span"),
      backend: el("span"),
      status: el("span", { className: "status" }),
      detail: el("span", { className: "detail" }),
      address: el("span", { className: "mono" }),
      durability: el("span"),
      age: el("span"),
      left: el("span", { className: "left" }),
      extend: el("button", { type: "button", text: "Extend", onClick: () => this.onExtend(row.instance) }),
      remove: el("button", {
        type: "button",
        className: "danger",
        text: "Delete",
        onClick: () => this.onDelete(row.instance),
      }),
    };
    row.node = el(
      "tr",
      { "data-id": instance.id },
      cell("Name", row.name, row.login),
      this.showOwner ? cell("Owner", row.owner) : null,
      cell("Backend", row.backend),
      cell("Status", row.status, row.detail),
      cell("Host:port", row.address),
      cell("Durability", row.durability),
      cell("Age", row.age),
      cell("Time left", row.left),
      el("td", { className: "actions", "data-label": "Actions" }, row.extend, row.remove),
    );
    this.rows.set(instance.id, row);
    return row;
  }

  fill(row) {
    const instance = row.instance;
    setText(row.name, instance.postgraas_instance_name);
    setText(row.login, `${instance.db_username} @ ${instance.db_name}`);
    setText(row.owner, instance.owner || "—");
    setText(row.backend, instance.backend);
    setText(row.status, instance.status);
    row.status.className = `status status-${instance.status}`;
    const detail = instance.status_detail;
    setText(row.detail, detail ? (instance.status === "failed" ? `Reason: ${detail}` : detail) : "");
    show(row.detail, Boolean(detail));
    setText(row.address, address(instance));
    setText(row.durability, instance.durability);
    const name = instance.postgraas_instance_name;
    row.extend.setAttribute("aria-label", `Extend ${name}`);
    row.remove.setAttribute("aria-label", `Delete ${name}`);
    row.extend.disabled = instance.status === "deleting";
  }

  tick() {
    const now = Date.now();
    for (const row of this.rows.values()) {
      setText(row.age, age(row.instance, now));
      setText(row.left, timeLeft(row.instance, now));
    }
  }
}
