// The console's entry: sign-in where the server wants a token, then the list, the create form and the
// status strip, all from the JSON API of this server.

import { ApiError, onTokenRefused, overview } from "./api.js";
import { CreateForm } from "./create.js";
import { byId, setText, show } from "./dom.js";
import { InstanceList } from "./list.js";
import { RowActions } from "./row-actions.js";
import { forgetToken, getToken, setToken } from "./session.js";
import { renderStatus } from "./status.js";

const OVERVIEW_MS = 10000;

const actions = new RowActions({ done: (message) => changed(message) });
const list = new InstanceList({
  onExtend: (instance) => actions.openExtend(instance),
  onDelete: (instance) => actions.openDelete(instance),
});
const create = new CreateForm({ created: () => list.refresh() });
let overviewTimer = null;
let current = null;

function changed(message) {
  setText(byId("list-message"), message);
  list.refresh();
  refreshOverview();
}

function signedOut(message) {
  forgetToken();
  list.stop();
  clearInterval(overviewTimer);
  current = null;
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  show(byId("app"), false);
  show(byId("sign-out"), false);
  setText(byId("who"), "");
  setText(byId("sign-in-message"), message);
  show(byId("sign-in"), true);
  byId("sign-in-token").focus();
}

async function refreshOverview() {
  try {
    current = await overview();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status !== 401) await renderStatus(current);
    return;
  }
  create.configure(current);
  await renderStatus(current);
}

async function enter() {
  try {
    current = await overview();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    // A 401 has shown the sign-in already (onTokenRefused); anything else (the server down) is said there.
    if (error.status !== 401) {
      setText(byId("sign-in-message"), error.message);
      show(byId("sign-in"), true);
    }
    return;
  }
  show(byId("sign-in"), false);
  const token = current.auth_mode === "token";
  setText(byId("who"), token ? `Signed in as ${current.owner}${current.admin ? " (admin: every owner)" : ""}` : "");
  show(byId("sign-out"), token);
  actions.configure({ authMode: current.auth_mode });
  list.configure({ admin: current.admin, backends: current.backends });
  create.configure(current);
  show(byId("app"), true);
  list.start();
  await renderStatus(current);
  clearInterval(overviewTimer);
  overviewTimer = setInterval(() => document.hidden || refreshOverview(), OVERVIEW_MS);
}

onTokenRefused((message) => {
  const sent = Boolean(getToken());
  signedOut(sent ? `The server refused the token: ${message}` : "");
});

byId("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = byId("sign-in-token");
  const token = input.value.trim();
  input.value = "";
  if (!token) return;
  setToken(token);
  enter();
});

byId("sign-out").addEventListener("click", () => signedOut("Signed out."));

enter();
