// How instances read: ages, time left, and the lines a person copies to connect.

export function span(seconds) {
  // The two largest units, as the CLI prints them: 45s, 5m 10s, 2h 03m, 3d 4h.
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  return `${m}m ${String(s % 60).padStart(2, "0")}s`;
}

export function age(instance, now) {
  return span((now - Date.parse(instance.creation_timestamp)) / 1000);
}

// Counting down to the second: hours, minutes and seconds under a day.
export function timeLeft(instance, now) {
  if (!instance.expires_at) return "no expiry";
  const left = Math.floor((Date.parse(instance.expires_at) - now) / 1000);
  if (left <= 0) return "expired";
  if (left >= 86400) return span(left);
  const h = Math.floor(left / 3600);
  const m = String(Math.floor((left % 3600) / 60)).padStart(2, "0");
  const sec = String(left % 60).padStart(2, "0");
  return h ? `${h}h ${m}m ${sec}s` : `${m}m ${sec}s`;
}

export function address(instance) {
  if (!instance.host || !instance.port) return "—";
  const host = instance.host.includes(":") ? `[${instance.host}]` : instance.host;
  return `${host}:${instance.port}`;
}

// As shlex.quote (and the CLI's --output env): plain values bare, the rest in single quotes.
export function shellQuote(value) {
  if (/^[A-Za-z0-9@%+=:,./_-]+$/.test(value)) return value;
  return `'${value.replaceAll("'", `'"'"'`)}'`;
}

// The CLI's --output env lines, in its order, with the password of the create's answer.
export function envLines(created) {
  const pairs = [
    ["DATABASE_URL", created.connection_uri],
    ["PGHOST", created.host],
    ["PGPORT", created.port === null ? null : String(created.port)],
    ["PGUSER", created.db_username],
    ["PGPASSWORD", created.db_pwd],
    ["PGDATABASE", created.db_name],
  ];
  return pairs
    .filter(([, value]) => value)
    .map(([key, value]) => `${key}=${shellQuote(value)}`)
    .join("\n");
}

export function psqlCommand(created) {
  return `psql ${shellQuote(created.connection_uri)}`;
}
