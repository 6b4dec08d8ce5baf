// Extending and deleting one database, each in a dialog. Without tokens (auth.mode none) the API
// takes the database's password as the proof, so the dialogs ask for it; with a token they do not.

import { ApiError, deleteInstance, extendInstance } from "./api.js";
import { byId, setText, show } from "./dom.js";
import { clearErrors, showErrors } from "./form-errors.js";

function wireCancel(dialog) {
  for (const button of dialog.querySelectorAll("button.cancel")) button.addEventListener("click", () => dialog.close());
}

function withPassword(form, body, asksPassword) {
  const password = form.elements.db_pwd.value;
  return asksPassword && password ? { ...body, db_pwd: password } : body;
}

export class RowActions {
  constructor({ done }) {
    // done(message): after a change, with the server's word on it.
    this.done = done;
    this.asksPassword = false;
    this.extendDialog = byId("extend-dialog");
    this.deleteDialog = byId("delete-dialog");
    this.extendForm = byId("extend-form");
    this.deleteForm = byId("delete-form");
    wireCancel(this.extendDialog);
    wireCancel(this.deleteDialog);
    this.extendForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.extend();
    });
    this.deleteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.remove(false);
    });
    byId("delete-force").addEventListener("click", () => this.remove(true));
  }

  configure({ authMode }) {
    this.asksPassword = authMode === "none";
    for (const field of document.querySelectorAll("dialog .password-field")) show(field, this.asksPassword);
  }

  openExtend(instance) {
    this.instance = instance;
    setText(byId("extend-title"), `Extend ${instance.postgraas_instance_name}`);
    clearErrors(this.extendForm, byId("extend-message"));
    this.extendForm.elements.db_pwd.value = "";
    this.extendDialog.showModal();
    this.extendForm.elements.ttl.select();
  }

  openDelete(instance) {
    this.instance = instance;
    setText(byId("delete-title"), `Delete ${instance.postgraas_instance_name}?`);
    clearErrors(this.deleteForm, byId("delete-message"));
    this.deleteForm.elements.db_pwd.value = "";
    show(byId("delete-force"), false);
    this.deleteDialog.showModal();
    (this.asksPassword ? this.deleteForm.elements.db_pwd : this.deleteDialog.querySelector("button.cancel")).focus();
  }

  async extend() {
    const form = this.extendForm;
    const body = withPassword(form, { ttl: form.elements.ttl.value.trim() }, this.asksPassword);
    await this.attempt(form, byId("extend-message"), async () => {
      const extended = await extendInstance(this.instance.id, body);
      this.extendDialog.close();
      this.done(`Extended ${extended.postgraas_instance_name}.`);
    });
  }

  async remove(force) {
    const form = this.deleteForm;
    const body = withPassword(form, force ? { force: true } : {}, this.asksPassword);
    await this.attempt(form, byId("delete-message"), async () => {
      const deleted = await deleteInstance(this.instance.id, body);
      this.deleteDialog.close();
      this.done(deleted.msg);
    });
  }

  async attempt(form, message, action) {
    const buttons = form.querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    try {
      await action();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.status === 401 && !error.fields.db_pwd) {
        // The token was refused: the sign-in takes over.
        form.closest("dialog").close();
        return;
      }
      showErrors(form, message, error);
      // The server says sessions are open (its errors name "force"): offer to end them.
      if (form === this.deleteForm && error.status === 409 && error.fields.force) {
        show(byId("delete-force"), true);
        byId("delete-force").focus();
      }
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  }
}
