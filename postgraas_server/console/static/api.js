// The JSON API of the same server, the page's only source of truth. The token goes in the
// Authorization header and nowhere else.

import { getToken } from "./session.js";

export class ApiError extends Error {
  constructor(status, body) {
    const msg = body && typeof body.msg === "string" ? body.msg : `The server answered ${status}.`;
    super(msg);
    this.status = status;
    // {field: reason} for the fields the server named.
    this.fields = body && body.errors && typeof body.errors === "object" ? body.errors : {};
  }
}

let whenSignedOut = () => {};

// Called with the server's message when it refuses the token (a 401 asking for a bearer token).
export function onTokenRefused(handler) {
  whenSignedOut = handler;
}

async function send(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    return await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, { msg: "The server cannot be reached." });
  }
}

async function answer(response) {
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = new ApiError(response.status, data);
  // A wrong db_pwd is a 401 too; only a refused token comes with WWW-Authenticate.
  if (response.status === 401 && response.headers.has("WWW-Authenticate")) whenSignedOut(error.message);
  throw error;
}

export async function call(method, path, body) {
  return answer(await send(method, path, body));
}

export const overview = () => call("GET", "/postgraas_overview");
export const templates = () => call("GET", "/postgraas_templates");
export const createInstance = (body) => call("POST", "/postgraas_instances", body);
export const extendInstance = (id, body) => call("PATCH", `/postgraas_instances/${id}`, body);
export const deleteInstance = (id, body) => call("DELETE", `/postgraas_instances/${id}`, body);

// /ready answers 503 with its checks when something is down: both are an answer here.
export async function readiness() {
  const response = await send("GET", "/ready");
  const data = await response.json().catch(() => null);
  if (!data || typeof data.checks !== "object") throw new ApiError(response.status, data);
  return data;
}

// One page of the list: the server filters, and its Link rel="next" carries the next cursor.
export async function listInstances(filters, after) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(filters)) if (value) query.set(key, value);
  if (after) query.set("after", String(after));
  const response = await send("GET", `/postgraas_instances?${query}`);
  const rows = await answer(response);
  return { rows, nextAfter: nextCursor(response.headers.get("Link")) };
}

function nextCursor(link) {
  const match = /<([^>]*)>\s*;\s*rel="next"/.exec(link || "");
  if (!match) return null;
  return new URL(match[1], window.location.href).searchParams.get("after");
}
