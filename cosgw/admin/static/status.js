// The cosgw status page: fetches the admin API every REFRESH_MS and fills
// the tables.  Every value goes in with textContent, never as HTML: user
// names and paths are chosen by clients.
"use strict";

const REFRESH_MS = 1500;
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

function bytes(n) {
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit ? value.toFixed(1) : String(value)) + " " + UNITS[unit];
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = Math.floor(s % 60);
  return h ? h + " h " + m + " min" : m + " min " + rest + " s";
}

function clock(epoch) {
  if (!epoch) return "";
  const when = new Date(epoch * 1000);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay ? when.toLocaleTimeString() : when.toLocaleString();
}

function address(ip, port) {
  return (ip.includes(":") ? "[" + ip + "]" : ip) + ":" + port;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(tableId, items, render, columns, empty) {
  const body = document.querySelector("#" + tableId + " tbody");
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    render(row, item);
    return row;
  });
  if (!rows.length) {
    const row = document.createElement("tr");
    cell(row, empty, "none").colSpan = columns;
    rows.push(row);
  }
  body.replaceChildren(...rows);
}

async function getJSON(path) {
  const answer = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!answer.ok) throw new Error(path + ": " + answer.status + " " + answer.statusText);
  return answer.json();
}

async function kick(session) {
  const who = session.user || "(not logged in)";
  if (!window.confirm("End the session of " + who + " from " + address(session.client_ip, session.client_port) + "?")) return;
  await fetch("api/sessions/" + encodeURIComponent(session.id) + "/kick", { method: "POST", credentials: "same-origin" });
  refreshSoon();
}

function session(row, s) {
  row.dataset.session = s.id;
  cell(row, s.user || "(not logged in)", s.user ? "user" : "user none");
  cell(row, address(s.client_ip, s.client_port), "address");
  cell(row, s.protocol.toUpperCase(), "protocol");
  cell(row, clock(s.since));
  cell(row, seconds(s.idle), "num");
  const button = document.createElement("button");
  button.className = "kick";
  button.textContent = "kick";
  button.addEventListener("click", () => kick(s));
  cell(row, "").appendChild(button);
}

function transfer(row, t) {
  row.dataset.transfer = t.id;
  cell(row, t.user, "user");
  cell(row, t.direction === "upload" ? "↑ upload" : "↓ download", "nowrap");
  cell(row, t.path, "path");
  const progressCell = cell(row, "", "nowrap progress");
  const done = t.offset + t.bytes;
  if (t.size) {
    const bar = document.createElement("progress");
    bar.max = t.size;
    bar.value = Math.min(done, t.size);
    progressCell.appendChild(bar);
    const percent = document.createElement("span");
    percent.className = "percent";
    percent.textContent = Math.floor((100 * Math.min(done, t.size)) / t.size) + " %";
    progressCell.appendChild(percent);
  } else {
    progressCell.textContent = "size unknown";
    progressCell.className = "none nowrap";
  }
  cell(row, t.size ? bytes(done) + " of " + bytes(t.size) : bytes(done), "num bytes");
  cell(row, bytes(t.rate) + "/s", "num");
  cell(row, t.eta === null ? "" : seconds(t.eta), "num eta");
}

function finished(row, t) {
  cell(row, clock(t.finished));
  cell(row, t.user, "user");
  cell(row, t.client_ip);
  cell(row, t.direction === "upload" ? "↑" : "↓");
  cell(row, t.path, "path");
  cell(row, bytes(t.bytes), "num");
  cell(row, seconds(t.duration), "num");
  cell(row, bytes(t.rate) + "/s", "num");
  cell(row, t.outcome, t.outcome === "ok" ? "ok" : "bad");
}

function store(row, entry) {
  const [name, h] = entry;
  cell(row, name);
  if (h.ok === null) cell(row, "not checked yet", "pending");
  else cell(row, h.ok ? "answering" : "not answering: " + h.reason, h.ok ? "ok" : "bad");
  cell(row, clock(h.checked));
  cell(row, h.seconds === null ? "" : (h.seconds * 1000).toFixed(0) + " ms", "num");
}

let timer = null;

function refreshSoon() {
  clearTimeout(timer);
  timer = setTimeout(refresh, 100);
}

async function refresh() {
  const state = document.getElementById("state");
  try {
    const [s, t, h] = await Promise.all([
      getJSON("api/sessions"),
      getJSON("api/transfers"),
      getJSON("api/stores"),
    ]);
    fill("sessions", s.sessions, session, 6, "no sessions");
    fill("transfers", t.transfers, transfer, 7, "no transfers in progress");
    fill("finished", t.finished, finished, 9, "none yet");
    fill("stores", Object.entries(h.stores), store, 4, "no stores");
    document.getElementById("session-count").textContent = "(" + s.sessions.length + ")";
    document.getElementById("transfer-count").textContent = "(" + t.transfers.length + ")";
    state.textContent = h.ready ? "ready" : "not ready: " + h.problems.join("; ");
    state.className = h.ready ? "ok" : "bad";
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    state.textContent = "cannot reach the gateway (" + error.message + ")";
    state.className = "bad";
  } finally {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
