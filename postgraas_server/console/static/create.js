// The create form and what it answers: the connection URI, the PG* / DATABASE_URL lines and a psql
// command, shown once (the server keeps only a hash of the password).

import { ApiError, createInstance, templates } from "./api.js";
import { wireCopyButtons } from "./clipboard.js";
import { byId, el, setText, show } from "./dom.js";
import { envLines, psqlCommand } from "./format.js";
import { clearErrors, showErrors } from "./form-errors.js";

const OPTIONAL = ["db_pwd", "ttl", "template"];

export class CreateForm {
  constructor({ created }) {
    // created(instance): after a create, so the list shows it.
    this.created = created;
    this.form = byId("create-form");
    this.message = byId("create-message");
    this.result = byId("created");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    wireCopyButtons(this.result, byId("copy-status"));
    byId("created-done").addEventListener("click", () => this.forgetResult());
  }

  configure({ backends }) {
    const select = this.form.elements.backend;
    const chosen = select.value;
    select.replaceChildren(
      ...backends.map((b) => el("option", { value: b.name, text: b.default ? `${b.name} (default)` : b.name })),
    );
    const kept = backends.find((b) => b.name === chosen) || backends.find((b) => b.default);
    if (kept) select.value = kept.name;
    const withTemplates = backends.some((b) => b.templates);
    show(byId("create-template-field"), withTemplates);
    if (withTemplates) this.loadTemplates();
  }

  // The token's ready templates, offered as suggestions; the field takes any NAME or NAME@HASH.
  async loadTemplates() {
    try {
      const found = await templates();
      const names = [...new Set(found.filter((t) => t.status === "ready").map((t) => t.name))];
      byId("create-template-list").replaceChildren(...names.map((name) => el("option", { value: name })));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      /* no suggestions: the field still works */
    }
  }

  body() {
    const body = {};
    for (const input of this.form.elements) {
      if (!input.name || input.closest("[hidden]")) continue;
      const value = input.name === "db_pwd" ? input.value : input.value.trim();
      if (OPTIONAL.includes(input.name) && !value) continue;
      body[input.name] = value;
    }
    return body;
  }

  async submit() {
    clearErrors(this.form, this.message);
    const button = byId("create-submit");
    button.disabled = true;
    setText(byId("create-progress"), "Creating: the database is started and a login proven…");
    try {
      const instance = await createInstance(this.body());
      this.form.elements.db_pwd.value = "";
      this.form.elements.postgraas_instance_name.value = "";
      this.showResult(instance);
      this.created(instance);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (!(error.status === 401 && !error.fields.db_pwd)) showErrors(this.form, this.message, error);
    } finally {
      button.disabled = false;
      setText(byId("create-progress"), "");
    }
  }

  showResult(instance) {
    const ready = Boolean(instance.connection_uri);
    setText(byId("created-title"), `Created ${instance.postgraas_instance_name} (${instance.status})`);
    setText(byId("created-uri"), ready ? instance.connection_uri : "Not known until the database is ready.");
    setText(byId("created-env"), envLines(instance));
    setText(byId("created-psql"), ready ? psqlCommand(instance) : "");
    setText(byId("copy-status"), "");
    show(this.result, true);
    byId("created-title").focus();
  }

  forgetResult() {
    for (const id of ["created-uri", "created-env", "created-psql", "created-title", "copy-status"]) setText(byId(id), "");
    show(this.result, false);
    this.form.elements.postgraas_instance_name.focus();
  }
}
