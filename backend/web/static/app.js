// The operator page: draws the sites' geometry (no map tiles: vector layers only),
// follows the live state over server-sent events, and sends actions with the CSRF token.
"use strict";

let me = null;
let map = null;
const layers = {};
const unitPos = {};

function el(tag, attrs, ...kids) {
  // Text goes in as text nodes, never as HTML: child references and reasons are data.
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) {
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

// Leaflet puts a string tooltip in as HTML: give it a text node's element instead.
const tip = text => el("span", {}, text);

function ago(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (isNaN(s)) return String(iso);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function epochText(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return ago(new Date(v * 1000).toISOString());
  return ago(v);
}

async function api(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": me.csrf},
    body: JSON.stringify(body),
  });
  const doc = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(doc.error || `HTTP ${r.status}`);
  return doc;
}

function drawSites(sites) {
  map = L.map("map", {attributionControl: false, zoomSnap: 0.25});
  for (const name of ["geofences", "zones", "cameras", "units", "alerts"]) {
    layers[name] = L.layerGroup().addTo(map);
  }
  const bounds = [];
  for (const s of sites) {
    for (const g of s.geofences) {
      const opts = {color: "#2a7", weight: 2, dashArray: "6 4", fill: false};
      const shape = g.points.length ? L.polygon(g.points, opts)
                                    : L.circle([g.lat, g.lon], {...opts, radius: g.radius_m});
      shape.bindTooltip(tip(`geofence ${g.id}`)).addTo(layers.geofences);
      bounds.push(...(g.points.length ? g.points : [[g.lat, g.lon]]));
    }
    for (const z of s.zones) {
      L.circle([z.lat, z.lon], {radius: z.radius_m, color: "#36c", weight: 1, fillOpacity: 0.12})
        .bindTooltip(tip(`zone ${z.id} (${z.unit})`)).addTo(layers.zones);
      bounds.push([z.lat, z.lon]);
    }
    for (const c of s.cameras) {
      L.circleMarker([c.lat, c.lon], {radius: 4, color: "#737", fillOpacity: 0.9})
        .bindTooltip(tip(c.id)).addTo(layers.cameras);
      bounds.push([c.lat, c.lon]);
    }
    for (const u of s.units) {
      unitPos[u.id] = [u.lat, u.lon];
      L.circleMarker([u.lat, u.lon], {radius: 6, color: "#222", fillColor: "#fff", fillOpacity: 1})
        .bindTooltip(tip(u.id), {permanent: true, direction: "right", className: "unit-label"})
        .addTo(layers.units);
      bounds.push([u.lat, u.lon]);
    }
  }
  if (bounds.length) map.fitBounds(bounds, {padding: [30, 30], maxZoom: 18});
  else map.setView([0, 0], 2);
  for (const sel of document.querySelectorAll(".site-select")) {
    for (const s of sites) sel.append(el("option", {value: s.id}, s.name || s.id));
  }
  const unitSel = document.getElementById("locate-unit");
  for (const s of sites) for (const u of s.units) unitSel.append(el("option", {value: u.id}, u.id));
}

const KIND = {sos: "SOS", zone_alert: "Left must-stay zone"};
let seenAlerts = null;  // alert ids already shown: the map moves to a new one

function renderAlerts(alerts) {
  const box = document.getElementById("alerts");
  document.getElementById("alert-count").textContent = alerts.length;
  document.getElementById("alert-count").classList.toggle("hot", alerts.length > 0);
  box.replaceChildren();
  if (layers.alerts) layers.alerts.clearLayers();
  const fresh = alerts.find(a => seenAlerts !== null && !seenAlerts.has(a.id) && a.lat !== null);
  if (fresh && map) map.setView([fresh.lat, fresh.lon], Math.max(map.getZoom(), 17));
  seenAlerts = new Set(alerts.map(a => a.id));
  if (!alerts.length) { box.append(el("p", {class: "none"}, "No active SOS or must-stay alert.")); return; }
  for (const a of alerts) {
    const cams = a.cameras.length ? a.cameras.map(c => `${c.id} (${Math.round(c.distance_m)} m)`).join(", ")
                                  : (a.unit_cameras.join(", ") || "none near");
    const pos = a.lat === null ? "position unknown"
                               : `${a.lat.toFixed(5)}, ${a.lon.toFixed(5)} (${a.where})`;
    const locate = el("button", {type: "button", class: "small"}, "Locate");
    locate.addEventListener("click", () => {
      document.getElementById("locate-child").value = a.child;
      document.getElementById("locate-unit").value = "";
      document.getElementById("locate-form").requestSubmit();
    });
    locate.disabled = !(me && me.may_act);
    box.append(el("div", {class: `alert ${a.kind}`, "data-id": a.id, "data-child": a.child},
      el("div", {class: "head"}, el("span", {class: "kind"}, KIND[a.kind] || a.kind), " ",
         el("span", {class: "child"}, a.child), " ", locate),
      el("div", {}, `site ${a.site} · unit ${a.unit} · reader ${a.reader}` +
                    (a.zone ? ` · zone ${a.zone}` : "")),
      el("div", {}, `${ago(a.time)} · ${pos}`),
      el("div", {class: "cams"}, `cameras: ${cams}`)));
    if (a.lat !== null && map) {
      L.circleMarker([a.lat, a.lon], {radius: 12, color: "#d00", weight: 3, fillOpacity: 0.35,
                                      className: "alert-marker"})
        .bindTooltip(tip(`${KIND[a.kind] || a.kind}: ${a.child}`),
                     {permanent: true, direction: a.kind === "sos" ? "top" : "bottom"})
        .addTo(layers.alerts);
    }
  }
}

function renderRollCalls(calls) {
  const box = document.getElementById("rollcalls");
  box.replaceChildren();
  if (!calls.length) { box.append(el("p", {class: "none"}, "No roll-call running.")); return; }
  for (const c of calls) {
    const present = el("ul", {class: "present"}, ...c.present.map(p =>
      el("li", {}, `${p.child} — at ${p.units.join(", ")}, seen ${epochText(p.last_seen)}`)));
    const missing = el("ul", {class: "missing"}, ...c.missing.map(m =>
      el("li", {}, `${m.child} — last ${m.last_reader || "?"} ${epochText(m.last_seen)}`)));
    box.append(el("div", {class: "rollcall", "data-site": c.site, "data-alert": c.alert_id},
      el("div", {class: "head"}, `${c.site} · ${c.alert_id}`, " ",
         el("span", {class: "present-count"}, `${c.present.length} present`), " ",
         el("span", {class: c.missing.length ? "missing-count hot" : "missing-count"},
            `${c.missing.length} missing`)),
      el("div", {class: "note"}, `units ${c.units.join(", ")} · updated ${ago(c.updated)}`),
      el("div", {class: "cols"}, el("div", {}, el("h3", {}, "Missing"), missing),
         el("div", {}, el("h3", {}, "Present"), present))));
  }
}

function renderUnits(units) {
  const body = document.querySelector("#units tbody");
  body.replaceChildren(...units.map(u => el("tr", {class: `state-${u.state.replace(" ", "-")}`,
                                                    "data-unit": u.unit},
    el("td", {}, u.unit), el("td", {}, u.site), el("td", {class: "state"}, u.state),
    el("td", {}, ago(u.last_seen)), el("td", {}, u.backlog ?? "—"),
    el("td", {}, u.awaiting_receipt ?? "—"),
    el("td", {class: u.clock === "ok" ? "" : "warn"}, u.clock),
    el("td", {}, Object.entries(u.readers).map(([k, v]) => `${k}: ${v}`).join(", ")))));
}

function sighting(c) {
  // One child in a locate reply, in words.
  if (c.enrolled === false) return `${c.child}: not enrolled at this unit`;
  if (!c.found) return `${c.child}: not seen`;
  const where = c.zone ? `in ${c.zone}` : (c.last_zone ? `last in ${c.last_zone}` : "seen");
  const rssi = c.rssi === null || c.rssi === undefined ? "" : `, ${c.rssi} dBm`;
  return `${c.child}: ${where} at reader ${c.reader}, ${ago(c.time)}${rssi}`;
}

function replyText(r) {
  const head = `${r.unit}: ${r.code} ${r.reason || ""}`;
  if (r.data && Array.isArray(r.data.children)) {
    return `${head} — ${r.data.children.map(sighting).join("; ")}`;
  }
  return r.data ? `${head} ${JSON.stringify(r.data)}` : head;
}

function renderActions(actions) {
  const box = document.getElementById("replies");
  box.replaceChildren(...actions.map(a => el("div", {class: "action", "data-id": a.id,
                                                     "data-what": a.what},
    el("div", {class: "head"}, `${a.what} ${a.target}`, " ",
       el("span", {class: "note"}, `by ${a.user}, ${ago(new Date(a.time * 1000).toISOString())}`)),
    ...a.replies.map(r => el("div", {class: r.code === 200 ? "reply ok" : "reply bad"},
                             replyText(r))))));
}

function render(state) {
  renderAlerts(state.alerts);
  renderRollCalls(state.roll_calls);
  renderUnits(state.units);
  renderActions(state.actions || []);
  const live = document.getElementById("live");
  live.textContent = state.error ? `backend: ${state.error}` : "live";
  live.className = state.error ? "live bad" : "live on";
}

function follow() {
  const es = new EventSource("/events");
  es.addEventListener("state", e => render(JSON.parse(e.data)));
  es.onerror = () => {
    const live = document.getElementById("live");
    live.textContent = "reconnecting…"; live.className = "live off";
    // A 401 (session over) ends the stream for good: back to the login.
    fetch("/api/me", {credentials: "same-origin"}).then(r => { if (r.status === 401) location = "/login"; });
  };
}

function wireForms() {
  const note = document.getElementById("role-note");
  note.textContent = me.may_act ? `You are an operator: commands are signed by the backend and logged with your name.`
                                : `You are a viewer: only operators can send commands.`;
  for (const b of document.querySelectorAll("form.act button")) b.disabled = !me.may_act;
  const send = (form, path, body) => form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const btn = form.querySelector("button"); btn.disabled = true;
    const out = document.getElementById("replies");
    try { await api(path, body()); }
    catch (e) { out.prepend(el("div", {class: "reply bad"}, `${path}: ${e.message}`)); }
    finally { btn.disabled = !me.may_act; }
  });
  send(document.getElementById("locate-form"), "/api/locate", () => ({
    child: document.getElementById("locate-child").value.trim(),
    unit: document.getElementById("locate-unit").value}));
  send(document.getElementById("alert-start-form"), "/api/alert/start", () => ({
    site: document.getElementById("alert-site").value,
    alert_id: document.getElementById("alert-id").value.trim(),
    interval_s: Number(document.getElementById("alert-interval").value)}));
  send(document.getElementById("alert-stop-form"), "/api/alert/stop", () => ({
    site: document.getElementById("stop-site").value,
    alert_id: document.getElementById("stop-id").value.trim()}));
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", {method: "POST", credentials: "same-origin",
                            headers: {"X-CSRF-Token": me.csrf}});
    location = "/login";
  });
}

async function main() {
  const r = await fetch("/api/me", {credentials: "same-origin"});
  if (r.status === 401) { location = "/login"; return; }
  me = await r.json();
  document.getElementById("who").textContent = `${me.user} (${me.role})`;
  const sites = await (await fetch("/api/sites", {credentials: "same-origin"})).json();
  if (window.L) drawSites(sites);
  wireForms();
  follow();
}

main();
