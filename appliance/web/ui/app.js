// pacs-appliance web UI: one page, no build step, no library (see appliance/web/ui.py).
// Pages are routed on the URL fragment: #/studies?..., #/study/UID, #/upload,
// #/worklist, #/system. Every request goes to the daemon's public APIs with the
// browser's credentials (HTTP Basic, cached by the browser after the first login).
"use strict";

const SETTINGS = JSON.parse(document.getElementById("settings").textContent);
const ROOT = SETTINGS.dicomWebRoot || "/dicom-web";
const PAGE_SIZE = 50;
const $app = document.getElementById("app");

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

let busyCount = 0;
function busy(delta) {
  busyCount += delta;
  document.getElementById("busy").hidden = busyCount <= 0;
}

async function request(method, url, body, headers) {
  const init = { method, headers: Object.assign({}, headers || {}), credentials: "same-origin" };
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof FormData) init.body = body;
    else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  }
  busy(1);
  try {
    const r = await fetch(url, init);
    const type = r.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await r.json().catch(() => null) : await r.text();
    if (!r.ok) {
      const message = (data && data.Message) || (typeof data === "string" && data) || r.statusText;
      throw new HttpError(r.status, `${method} ${url}: ${r.status} ${message}`);
    }
    return data;
  } finally { busy(-1); }
}
const get = (url) => request("GET", url, undefined, { Accept: "application/json" });

// An endpoint another part of the daemon may not offer (older version): null, not an error.
async function optional(url) {
  try { return await get(url); } catch (e) {
    if (e instanceof HttpError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

function showError(e) {
  console.warn(e);
  const banner = document.getElementById("banner");
  banner.hidden = false;
  banner.className = "error";
  banner.textContent = e.message || String(e);
}
function clearBanner() { document.getElementById("banner").hidden = true; }
// A notice survives the one navigation that follows it ("Deleted", then the list).
let keepBanner = false;
function notice(text) {
  keepBanner = true;
  const banner = document.getElementById("banner");
  banner.hidden = false; banner.className = "notice"; banner.textContent = text;
}

// DICOM JSON (PS3.18 F.2) accessors.
function val(ds, tag) {
  const a = ds && ds[tag];
  if (!a || !a.Value || !a.Value.length) return "";
  const v = a.Value[0];
  if (a.vr === "PN") return typeof v === "object" ? (v.Alphabetic || v.Ideographic || "") : String(v);
  return v;
}
function vals(ds, tag) {
  const a = ds && ds[tag];
  return a && a.Value ? a.Value : [];
}
const T = {
  PatientName: "00100010", PatientID: "00100020", PatientBirthDate: "00100030",
  PatientSex: "00100040", StudyDate: "00080020", StudyTime: "00080030",
  AccessionNumber: "00080050", StudyDescription: "00081030", ModalitiesInStudy: "00080061",
  StudyInstanceUID: "0020000D", SeriesInstanceUID: "0020000E", SOPInstanceUID: "00080018",
  Modality: "00080060", SeriesNumber: "00200011", SeriesDescription: "0008103E",
  InstanceNumber: "00200013", NumberOfFrames: "00280008", NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208", NumberOfSeriesRelatedInstances: "00201209",
  ReferringPhysicianName: "00080090", FrameTime: "00181063", CineRate: "00180040",
  RecommendedDisplayFrameRate: "00082144", FrameTimeVector: "00181065",
  FailedSOPSequence: "00081198", ReferencedSOPSequence: "00081199", FailureReason: "00081197",
  WarningReason: "00081196", ReferencedSOPInstanceUID: "00081155",
};

const pn = (s) => String(s || "").replace(/\^+/g, " ").trim();
function da(s) {
  s = String(s || "");
  return /^\d{8}$/.test(s) ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6)}` : s;
}
function tm(s) {
  s = String(s || "");
  return /^\d{4}/.test(s) ? `${s.slice(0, 2)}:${s.slice(2, 4)}` : s;
}
function isoDay(d) {
  return `${d.getFullYear()}${String(d.getMonth() + 1).padStart(2, "0")}${String(d.getDate()).padStart(2, "0")}`;
}
function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function when(t) {
  if (!t) return "-";
  const d = new Date(t * 1000);
  return `${isoDay(d).replace(/(\d{4})(\d\d)(\d\d)/, "$1-$2-$3")} ${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}
function duration(s) {
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${hh} h` : `${hh} h ${m} min`;
}
const enc = encodeURIComponent;
const studyUrl = (study) => `${ROOT}/studies/${enc(study)}`;
const seriesUrl = (study, series) => `${studyUrl(study)}/series/${enc(series)}`;
const instanceUrl = (study, series, sop) => `${seriesUrl(study, series)}/instances/${enc(sop)}`;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent),
           query: new URLSearchParams(query || "") };
}

// Timers and players of the page shown, stopped when another page is opened.
let cleanups = [];
function onLeave(fn) { cleanups.push(fn); }

// ------------------------------------------------------------------ studies

const MODALITIES = ["", "US", "CT", "MR", "CR", "DX", "MG", "XA", "RF", "NM", "PT", "OT", "SR", "ES", "IO", "PX"];

function studyQuery(q) {
  const p = new URLSearchParams();
  const name = (q.get("name") || "").trim();
  if (name) p.set("PatientName", /[*?]/.test(name) ? name : `*${name}*`);
  for (const [key, tag] of [["id", "PatientID"], ["accession", "AccessionNumber"]]) {
    const v = (q.get(key) || "").trim();
    if (v) p.set(tag, v);
  }
  const range = q.get("date") || "";
  const today = new Date();
  if (range === "today") p.set("StudyDate", isoDay(today));
  else if (range === "7d") {
    const from = new Date(today); from.setDate(from.getDate() - 6);
    p.set("StudyDate", `${isoDay(from)}-${isoDay(today)}`);
  } else if (range === "custom") {
    const from = (q.get("from") || "").replace(/-/g, ""), to = (q.get("to") || "").replace(/-/g, "");
    if (from || to) p.set("StudyDate", `${from}-${to}`);
  }
  if (q.get("modality")) p.set("ModalitiesInStudy", q.get("modality"));
  p.set("orderby", "-StudyDate");
  p.set("includefield", "StudyDescription");
  const page = Math.max(0, parseInt(q.get("page") || "0", 10) || 0);
  p.set("limit", String(PAGE_SIZE + 1));  // one more tells whether there is a next page
  p.set("offset", String(page * PAGE_SIZE));
  return { url: `${ROOT}/studies?${p}`, page };
}

async function pageStudies(q) {
  const field = (label, input) => h("label", {}, label, input);
  const name = h("input", { name: "name", type: "search", value: q.get("name") || "", placeholder: "e.g. smith or sm*th", autofocus: true });
  const id = h("input", { name: "id", type: "search", value: q.get("id") || "" });
  const accession = h("input", { name: "accession", type: "search", value: q.get("accession") || "" });
  const date = h("select", { name: "date" },
    [["", "any date"], ["today", "today"], ["7d", "last 7 days"], ["custom", "from… to…"]]
      .map(([v, t]) => h("option", { value: v, selected: (q.get("date") || "") === v }, t)));
  const from = h("input", { name: "from", type: "date", value: q.get("from") || "" });
  const to = h("input", { name: "to", type: "date", value: q.get("to") || "" });
  const custom = h("span", { class: "custom-dates", hidden: q.get("date") !== "custom" }, from, " – ", to);
  date.addEventListener("change", () => { custom.hidden = date.value !== "custom"; });
  const modality = h("select", { name: "modality" },
    MODALITIES.map((m) => h("option", { value: m, selected: (q.get("modality") || "") === m }, m || "any modality")));
  const form = h("form", { class: "search", id: "study-search" },
    field("Patient name", name), field("Patient ID", id), field("Accession", accession),
    field("Date", h("span", {}, date, custom)), field("Modality", modality),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    if (date.value !== "custom") { p.delete("from"); p.delete("to"); }
    location.hash = `#/studies?${p}`;
  });
  const results = h("div", { id: "study-results" }, "…");
  $app.replaceChildren(h("h1", {}, "Studies"), form, results);

  const { url, page } = studyQuery(q);
  const t0 = performance.now();
  const rows = (await get(url)) || [];
  const more = rows.length > PAGE_SIZE;
  const shown = rows.slice(0, PAGE_SIZE);
  const table = h("table", { class: "list studies" },
    h("thead", {}, h("tr", {}, ["Patient", "Patient ID", "Birth date", "Study date", "Description",
      "Accession", "Modalities", "Series", "Images"].map((t) => h("th", {}, t)))),
    h("tbody", {}, shown.map((s) => {
      const uid = val(s, T.StudyInstanceUID);
      return h("tr", { class: "study-row", "data-uid": uid, tabindex: 0,
                       onclick: () => { location.hash = `#/study/${enc(uid)}`; },
                       onkeydown: (ev) => { if (ev.key === "Enter") location.hash = `#/study/${enc(uid)}`; } },
        h("td", {}, h("a", { href: `#/study/${enc(uid)}` }, pn(val(s, T.PatientName)) || "(no name)")),
        h("td", {}, val(s, T.PatientID)), h("td", {}, da(val(s, T.PatientBirthDate))),
        h("td", {}, `${da(val(s, T.StudyDate))} ${tm(val(s, T.StudyTime))}`),
        h("td", {}, val(s, T.StudyDescription)), h("td", {}, val(s, T.AccessionNumber)),
        h("td", {}, vals(s, T.ModalitiesInStudy).join(", ")),
        h("td", { class: "num" }, val(s, T.NumberOfStudyRelatedSeries)),
        h("td", { class: "num" }, val(s, T.NumberOfStudyRelatedInstances)));
    })));
  const go = (n) => { const p = new URLSearchParams(q); p.set("page", String(n)); location.hash = `#/studies?${p}`; };
  const pager = h("div", { class: "pager" },
    h("button", { id: "prev-page", disabled: page === 0, onclick: () => go(page - 1) }, "‹ newer"),
    ` page ${page + 1}: ${shown.length ? `${page * PAGE_SIZE + 1}–${page * PAGE_SIZE + shown.length}` : "no studies"} `,
    h("button", { id: "next-page", disabled: !more, onclick: () => go(page + 1) }, "older ›"),
    h("span", { class: "muted" }, ` (${Math.round(performance.now() - t0)} ms)`));
  results.replaceChildren(shown.length ? table : h("p", { class: "empty" }, "No study matches."), pager);
}

// ------------------------------------------------------------------ study

async function pageStudy(uid) {
  $app.replaceChildren(h("p", {}, "…"));
  const [studies, series] = await Promise.all([
    get(`${ROOT}/studies?StudyInstanceUID=${enc(uid)}&includefield=StudyDescription`),
    get(`${studyUrl(uid)}/series?includefield=SeriesDescription`).catch((e) => {
      if (e.status === 404) return [];
      throw e;
    }),
  ]);
  if (!studies || !studies.length) {
    $app.replaceChildren(h("h1", {}, "Study not found"), h("p", {}, h("a", { href: "#/studies" }, "Back to the studies")));
    return;
  }
  const s = studies[0];
  const header = h("section", { class: "study-header" },
    h("h1", { id: "patient-name" }, pn(val(s, T.PatientName)) || "(no name)"),
    h("dl", {},
      ...[["Patient ID", val(s, T.PatientID)], ["Birth date", da(val(s, T.PatientBirthDate))],
          ["Sex", val(s, T.PatientSex)], ["Study date", `${da(val(s, T.StudyDate))} ${tm(val(s, T.StudyTime))}`],
          ["Description", val(s, T.StudyDescription)], ["Accession", val(s, T.AccessionNumber)],
          ["Referring", pn(val(s, T.ReferringPhysicianName))],
          ["Series / images", `${val(s, T.NumberOfStudyRelatedSeries)} / ${val(s, T.NumberOfStudyRelatedInstances)}`]]
        .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v || "–")])));
  const actions = h("div", { class: "actions" },
    h("a", { class: "button", id: "download-zip", href: `${studyUrl(uid)}?accept=application/zip`,
              download: `${uid}.zip` }, "Download ZIP"),
    SETTINGS.viewerUrlTemplate && h("a", { class: "button", id: "open-viewer", target: "_blank", rel: "noopener",
      href: SETTINGS.viewerUrlTemplate.replaceAll("{StudyInstanceUID}", enc(uid)) }, "Open in viewer"),
    h("button", { id: "fix-patient", onclick: () => fixPatientForm(uid, s, panel) }, "Fix patient…"),
    h("button", { id: "delete-study", class: "danger", onclick: () => deleteResource(studyUrl(uid), "this whole study", "#/studies") }, "Delete study"));
  const panel = h("div", { id: "action-panel" });
  const viewer = h("section", { id: "viewer", class: "viewer" });
  const cards = h("div", { class: "series-list" }, series.map((se) => {
    const suid = val(se, T.SeriesInstanceUID);
    const img = h("img", { class: "thumb", alt: `series ${val(se, T.SeriesNumber)}`, loading: "lazy",
                           src: `${seriesUrl(uid, suid)}/thumbnail?viewport=128,128` });
    img.addEventListener("error", () => { img.replaceWith(h("div", { class: "thumb nothumb" }, val(se, T.Modality) || "?")); });
    return h("div", { class: "series-card", "data-uid": suid },
      h("button", { class: "thumb-button", title: "view", onclick: () => openSeries(viewer, uid, suid).catch(showError) }, img),
      h("div", { class: "series-text" },
        h("b", {}, `${val(se, T.Modality)} #${val(se, T.SeriesNumber)}`), " ",
        val(se, T.SeriesDescription), h("br"),
        h("span", { class: "count" }, `${val(se, T.NumberOfSeriesRelatedInstances)} image(s)`), " ",
        h("button", { class: "small danger", onclick: () => deleteResource(seriesUrl(uid, suid), "this series", null) }, "delete")));
  }));
  $app.replaceChildren(header, actions, panel, h("h2", {}, "Series"), cards, viewer);
  sendButton(uid, actions, panel);  // only when destinations exist
  if (series.length) await openSeries(viewer, uid, val(series[0], T.SeriesInstanceUID));
}

async function deleteResource(url, what, then) {
  if (!confirm(`Delete ${what}? This cannot be undone.`)) return;
  try {
    await request("DELETE", url);
    notice(`Deleted ${what}.`);
    if (then) location.hash = then; else route();
  } catch (e) { showError(e); }
}

const REASONS = [
  ["113038", "Incorrect Modality Worklist Entry"], ["113039", "Data Retention Policy Expired"],
  ["113001", "Rejected for Quality Reasons"], ["113037", "Rejected for Patient Safety Reasons"],
];

function fixPatientForm(uid, s, panel) {
  const input = (name, value, attrs) => h("label", {}, name, h("input", Object.assign({ name, value: value || "" }, attrs || {})));
  const form = h("form", { class: "fix", id: "fix-form" },
    h("h3", {}, "Fix patient"),
    input("PatientName", val(s, T.PatientName)), input("PatientID", val(s, T.PatientID)),
    input("PatientBirthDate", val(s, T.PatientBirthDate), { pattern: "\\d{8}|", placeholder: "YYYYMMDD" }),
    h("label", {}, "PatientSex", h("select", { name: "PatientSex" },
      ["", "F", "M", "O"].map((x) => h("option", { value: x, selected: val(s, T.PatientSex) === x }, x || "–")))),
    input("AccessionNumber", val(s, T.AccessionNumber)),
    h("label", {}, "Reason", h("select", { name: "Reason" },
      REASONS.map(([code, text]) => h("option", { value: `DCM ${code} ${text}` }, `${text} (DCM ${code})`)))),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "KeepUIDs" }), "keep the UIDs"),
    h("div", {}, h("button", { type: "submit" }, "Apply"), " ",
      h("button", { type: "button", onclick: () => panel.replaceChildren() }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    // Only what the user changed is replaced; the rest of the files stays as it is.
    const replace = {};
    for (const k of ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"]) {
      const value = String(data.get(k) || "").trim();
      if (value !== String(val(s, T[k]) || "")) replace[k] = value;
    }
    if (!Object.keys(replace).length) { notice("Nothing was changed."); return; }
    try {
      const answer = await request("POST", `/studies/${enc(uid)}/modify`,
        { Replace: replace, Reason: data.get("Reason"), KeepUIDs: data.get("KeepUIDs") === "on" });
      notice(`Corrected: ${answer.Instances} image(s).`);
      location.hash = `#/study/${enc(answer.StudyInstanceUID)}`;
      if (answer.StudyInstanceUID === uid) route();
    } catch (e) { showError(e); }
  });
  panel.replaceChildren(form);
}

async function sendButton(uid, actions, panel) {
  let modalities, servers;
  try {
    [modalities, servers] = await Promise.all([optional("/modalities"), optional(`${ROOT}/servers`)]);
  } catch (e) { showError(e); return; }
  const dests = [...(modalities || []).map((n) => ["dicom", n]), ...(servers || []).map((n) => ["dicomweb", n])];
  if (!dests.length) return;
  actions.insertBefore(h("button", { id: "send-study", onclick: () => {
    const select = h("select", { name: "dest" }, dests.map(([kind, n]) =>
      h("option", { value: `${kind}:${n}` }, `${n} (${kind === "dicom" ? "DICOM" : "DICOMweb"})`)));
    const progress = h("progress", { max: 100, value: 0, hidden: true });
    const state = h("span", { class: "job-state" });
    const form = h("form", { class: "send", id: "send-form" }, h("h3", {}, "Send study"), select, " ",
      h("button", { type: "submit" }, "Send"), " ", progress, " ", state);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const [kind, name] = select.value.split(/:(.*)/s);
      const url = kind === "dicom" ? `/modalities/${enc(name)}/store` : `${ROOT}/servers/${enc(name)}/stow`;
      try {
        const job = await request("POST", url, { Resources: [uid] });
        progress.hidden = false;
        const poll = async () => {
          const j = await get(job.Path || `/jobs/${enc(job.ID)}`);
          progress.value = Number(j.Progress) || 0;
          state.textContent = `${j.State}${j.Instances !== undefined ? `: ${j.Sent ?? 0} of ${j.Instances} sent` : ""}`
            + (j.ErrorDetails ? ` (${j.ErrorDetails})` : "");
          if (!["Success", "Failure", "Failed", "Done", "Completed"].includes(j.State)) {
            const t = setTimeout(() => poll().catch(showError), 1000);
            onLeave(() => clearTimeout(t));
          }
        };
        await poll();
      } catch (e) { showError(e); }
    });
    panel.replaceChildren(form);
  } }, "Send…"), actions.querySelector("#fix-patient"));
}

// ------------------------------------------------------------------ viewer

async function openSeries(viewer, study, series) {
  stopPlayers();
  document.querySelectorAll(".series-card").forEach((c) => c.classList.toggle("selected", c.dataset.uid === series));
  viewer.replaceChildren(h("p", {}, "…"));
  const instances = await get(`${seriesUrl(study, series)}/instances`);
  const strip = h("div", { class: "instance-strip" }, instances.map((inst, i) => {
    const sop = val(inst, T.SOPInstanceUID);
    const frames = Number(val(inst, T.NumberOfFrames)) || 1;
    return h("button", { class: "instance", "data-uid": sop, onclick: () => openInstance(stage, study, series, sop, frames, strip).catch(showError) },
      `#${val(inst, T.InstanceNumber) || i + 1}${frames > 1 ? ` (${frames} frames)` : ""}`);
  }));
  const stage = h("div", { class: "stage" });
  viewer.replaceChildren(h("h2", {}, "Viewer"), strip, stage);
  if (instances.length) {
    const first = instances[0];
    await openInstance(stage, study, series, val(first, T.SOPInstanceUID), Number(val(first, T.NumberOfFrames)) || 1, strip);
  }
}

let players = [];
function stopPlayers() { players.forEach((p) => p.stop()); players = []; }

// Keys on the study page: arrows step through the cine's frames (or else the series'
// instances), space plays and pauses; not while typing in a form.
document.addEventListener("keydown", (ev) => {
  if (parseHash().parts[0] !== "study" || ev.target.closest("input, select, textarea, form")) return;
  const delta = { ArrowLeft: -1, ArrowRight: 1 }[ev.key];
  const player = players[0];
  if (player && ev.key === " ") {
    if (ev.target.closest("button, a")) return;  // the focused button's own click
    ev.preventDefault(); player.toggle(); return;
  }
  if (!delta) return;
  ev.preventDefault();
  if (player) { player.step(delta); return; }
  const buttons = [...document.querySelectorAll(".instance-strip .instance")];
  const at = buttons.findIndex((b) => b.classList.contains("selected"));
  const next = buttons[at + delta];
  if (next) next.click();
});

// Frames per second from the data: PS3.3 C.7.6.5 (Cine module) Recommended Display
// Frame Rate, then Cine Rate, then Frame Time (ms per frame), then the mean of the
// Frame Time Vector; 10 when nothing says.
function frameRate(ds) {
  const rdfr = Number(val(ds, T.RecommendedDisplayFrameRate));
  if (rdfr > 0) return [rdfr, "RecommendedDisplayFrameRate"];
  const cine = Number(val(ds, T.CineRate));
  if (cine > 0) return [cine, "CineRate"];
  const ft = Number(val(ds, T.FrameTime));
  if (ft > 0) return [1000 / ft, "FrameTime"];
  const vector = vals(ds, T.FrameTimeVector).map(Number).filter((x) => x > 0);
  if (vector.length) return [1000 / (vector.reduce((a, b) => a + b, 0) / vector.length), "FrameTimeVector"];
  return [10, "default"];
}

async function openInstance(stage, study, series, sop, frames, strip) {
  stopPlayers();
  strip.querySelectorAll(".instance").forEach((b) => b.classList.toggle("selected", b.dataset.uid === sop));
  const base = instanceUrl(study, series, sop);
  // A still image is an <img>; a cine is drawn on a canvas (see cinePlayer).
  const img = frames > 1 ? h("canvas", { id: "cine", class: "frame" })
    : h("img", { id: "frame", class: "frame", alt: "image", src: `${base}/frames/1/rendered` });
  if (frames <= 1) {
    // A report or a document has no frame to render: say so instead of a broken image.
    img.addEventListener("error", () => img.replaceWith(h("p", { class: "no-image" },
      "This instance has no image the server can render; its attributes are below.")));
  }
  const attrs = h("details", { class: "attributes" }, h("summary", {}, "DICOM attributes"));
  attrs.addEventListener("toggle", () => { if (attrs.open && !attrs.dataset.loaded) attributeTable(attrs, base); }, { once: false });
  const controls = h("div", { class: "controls" });
  stage.replaceChildren(controls, img, attrs);
  if (frames <= 1) return;
  const meta = (await get(`${base}/metadata`))[0];
  const [fps, source] = frameRate(meta);
  players.push(cinePlayer(controls, img, base, frames, fps, source));
}

function cinePlayer(controls, canvas, base, frames, fps, source) {
  const ctx = canvas.getContext("2d");
  const cache = new Array(frames + 1);
  let current = 1, playing = false, timer = null, stopped = false, inflight = 0, nextToLoad = 1;
  const slider = h("input", { id: "frame-slider", type: "range", min: 1, max: frames, value: 1 });
  const label = h("span", { id: "frame-label" }, `1 / ${frames}`);
  const play = h("button", { id: "play" }, "▶ play");
  const rate = h("span", { id: "frame-rate", title: `from ${source}` }, `${Math.round(fps * 10) / 10} fps (${source})`);
  controls.replaceChildren(play, slider, label, rate);
  // Frames are fetched ahead of playback, a few at a time, and decoded off the main
  // thread (createImageBitmap): showing one is then a copy onto the canvas, not a JPEG
  // decode, so playback keeps the data's rate once frames are in.
  const load = (n) => {
    if (cache[n]) return cache[n];
    cache[n] = fetch(`${base}/frames/${n}/rendered`, { credentials: "same-origin", headers: { Accept: "image/jpeg" } })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new HttpError(r.status, `frame ${n}: HTTP ${r.status}`))))
      .then((blob) => createImageBitmap(blob))
      .catch((e) => { showError(e); return null; });
    return cache[n];
  };
  const draw = (bitmap, n) => {
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    ctx.drawImage(bitmap, 0, 0);
    canvas.dataset.frame = String(n);
  };
  const pump = () => {
    while (!stopped && inflight < 6 && nextToLoad <= frames) {  // a browser opens 6 connections per host
      inflight++;
      load(nextToLoad++).then(() => { inflight--; pump(); });
    }
  };
  const show = async (n) => {
    current = n;
    slider.value = String(n);
    label.textContent = `${n} / ${frames}`;
    const bitmap = await load(n);
    if (bitmap && current === n) draw(bitmap, n);
  };
  const tick = async () => {
    if (!playing || stopped) return;
    const started = performance.now();
    await show(current >= frames ? 1 : current + 1);
    timer = setTimeout(tick, Math.max(0, 1000 / fps - (performance.now() - started)));
  };
  const toggle = () => {
    playing = !playing;
    play.textContent = playing ? "❚❚ pause" : "▶ play";
    play.dataset.state = playing ? "playing" : "paused";
    if (playing) tick(); else clearTimeout(timer);
  };
  play.addEventListener("click", toggle);
  slider.addEventListener("input", () => { show(Number(slider.value)); });
  pump();
  show(1);
  return { toggle, step(delta) { show(((current - 1 + delta + frames) % frames) + 1); }, stop() {
    stopped = true; playing = false; clearTimeout(timer);
    cache.forEach((p) => p && p.then((b) => b && b.close()));  // free the decoded frames
  } };
}

let dictionary = null;
async function attributeTable(details, base) {
  details.dataset.loaded = "1";
  try {
    const [meta] = await get(`${base}/metadata`);
    if (!dictionary) dictionary = await get("/ui/dictionary.json");
    const rows = [];
    const walk = (ds, depth) => {
      for (const tag of Object.keys(ds).sort()) {
        const a = ds[tag];
        let value = "";
        if (a.vr === "SQ") value = `${(a.Value || []).length} item(s)`;
        else if (a.BulkDataURI || a.InlineBinary) value = "(binary)";
        else if (a.Value) value = a.Value.map((v) => (typeof v === "object" ? (v.Alphabetic || JSON.stringify(v)) : v)).join("\\");
        rows.push(h("tr", {}, h("td", { class: "tag" }, `${"  ".repeat(depth)}(${tag.slice(0, 4)},${tag.slice(4)})`),
          h("td", {}, dictionary[tag] || ""), h("td", {}, a.vr || ""), h("td", { class: "value" }, String(value).slice(0, 200))));
        if (a.vr === "SQ") (a.Value || []).forEach((item) => walk(item, depth + 1));
      }
    };
    walk(meta, 0);
    details.append(h("table", { class: "list attrs" },
      h("thead", {}, h("tr", {}, ["Tag", "Keyword", "VR", "Value"].map((t) => h("th", {}, t)))), h("tbody", {}, rows)));
  } catch (e) { showError(e); }
}

// ------------------------------------------------------------------ upload

function pageUpload() {
  const input = h("input", { type: "file", id: "upload-files", multiple: true });
  const folder = h("input", { type: "file", id: "upload-folder", webkitdirectory: true, multiple: true });
  const drop = h("div", { id: "dropzone", class: "dropzone" }, "Drop DICOM files or folders here, or choose: ",
    h("label", { class: "button" }, "files", input), " ", h("label", { class: "button" }, "a folder", folder));
  const results = h("table", { class: "list uploads", id: "upload-results" },
    h("thead", {}, h("tr", {}, ["File", "Result", "Study"].map((t) => h("th", {}, t)))), h("tbody"));
  const summary = h("p", { id: "upload-summary" });
  $app.replaceChildren(h("h1", {}, "Upload"), drop, summary, results);
  const run = (files) => uploadAll(files, results.tBodies[0], summary);
  input.addEventListener("change", () => run([...input.files].map((f) => [f.name, f])));
  folder.addEventListener("change", () => run([...folder.files].map((f) => [f.webkitRelativePath || f.name, f])));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const entries = [...ev.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    run(entries.length ? await filesOf(entries) : [...ev.dataTransfer.files].map((f) => [f.name, f]));
  });
}

// Every file below dropped folders (FileSystemEntry API), as [path, File].
async function filesOf(entries) {
  const out = [];
  const visit = async (entry) => {
    if (entry.isFile) out.push([entry.fullPath.replace(/^\//, ""), await new Promise((ok, ko) => entry.file(ok, ko))]);
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {  // readEntries answers in batches until an empty one
        const batch = await new Promise((ok, ko) => reader.readEntries(ok, ko));
        if (!batch.length) break;
        for (const e of batch) await visit(e);
      }
    }
  };
  for (const e of entries) await visit(e);
  return out;
}

async function uploadAll(files, tbody, summary) {
  let stored = 0, failed = 0, next = 0;
  const total = files.length;
  summary.textContent = `0 / ${total}`;
  const one = async ([path, file]) => {
    const result = h("td", {}, "sending…"), study = h("td");
    tbody.append(h("tr", { class: "upload" }, h("td", {}, path), result, study));
    try {
      const answer = await stowOne(file);
      const ok = vals(answer, T.ReferencedSOPSequence)[0];
      const bad = vals(answer, T.FailedSOPSequence)[0];
      if (ok) {
        stored++;
        const warn = val(ok, T.WarningReason);
        result.textContent = warn ? `stored (warning ${Number(warn).toString(16)})` : "stored";
        result.className = "ok";
        // The instance's RetrieveURL (PS3.18 Table 10.5.3-3) names its study.
        const studyUid = (/\/studies\/([^/]+)/.exec(val(ok, "00081190")) || [])[1];
        if (studyUid) study.append(h("a", { href: `#/study/${studyUid}` }, "open"));
      } else {
        failed++;
        const reason = bad ? val(bad, T.FailureReason) : "";
        result.textContent = `refused${reason !== "" ? ` (0x${Number(reason).toString(16).toUpperCase()})` : ""}`;
        result.className = "failed";
      }
    } catch (e) {
      failed++;
      result.textContent = e.status === 409 ? "refused: not a storable DICOM file" : e.message;
      result.className = "failed";
    }
    summary.textContent = `${stored + failed} / ${total}: ${stored} stored, ${failed} failed`;
  };
  // Two at a time: the server stores in parallel, and the list fills in order.
  const worker = async () => { while (next < total) await one(files[next++]); };
  await Promise.all([worker(), worker()]);
}

// One file, one STOW-RS request (PS3.18 10.5): so each file gets its own answer.
async function stowOne(file) {
  const boundary = `----pacs${Math.random().toString(16).slice(2)}${Date.now()}`;
  const body = new Blob([`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file, `\r\n--${boundary}--\r\n`]);
  busy(1);
  try {
    const r = await fetch(`${ROOT}/studies`, { method: "POST", body, credentials: "same-origin", headers: {
      "Content-Type": `multipart/related; type="application/dicom"; boundary=${boundary}`, Accept: "application/dicom+json" } });
    const data = await r.json().catch(() => null);
    if (!r.ok && r.status !== 409 && r.status !== 202) throw new HttpError(r.status, (data && data.Message) || `HTTP ${r.status}`);
    return data;
  } finally { busy(-1); }
}

// ------------------------------------------------------------------ worklist

const WL_FIELDS = [
  ["PatientName", "Patient name", "DOE^JANE"], ["PatientID", "Patient ID", ""],
  ["PatientBirthDate", "Birth date", "YYYYMMDD"], ["PatientSex", "Sex", "F, M or O"],
  ["AccessionNumber", "Accession", ""], ["RequestedProcedureDescription", "Procedure", ""],
  ["Modality", "Modality", "US"], ["ScheduledStationAETitle", "Station AE title", ""],
  ["ScheduledProcedureStepStartDate", "Date", "YYYYMMDD"], ["ScheduledProcedureStepStartTime", "Time", "HHMM"],
];
const SPS = new Set(["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"]);

async function pageWorklist(q) {
  if (!SETTINGS.worklists) {
    $app.replaceChildren(h("h1", {}, "Worklist"), h("p", {}, "The worklist server is disabled (Worklists.Enable in the configuration)."));
    return;
  }
  const all = q.get("all") === "1";
  const items = await get("/ui/worklist");
  const today = isoDay(new Date());
  const shown = items.filter((i) => all || !i.ScheduledProcedureStepStartDate || i.ScheduledProcedureStepStartDate >= today)
    .sort((a, b) => `${a.ScheduledProcedureStepStartDate}${a.ScheduledProcedureStepStartTime}`
      .localeCompare(`${b.ScheduledProcedureStepStartDate}${b.ScheduledProcedureStepStartTime}`));
  const panel = h("div", { id: "worklist-panel" });
  const table = h("table", { class: "list worklist", id: "worklist-table" },
    h("thead", {}, h("tr", {}, ["Date", "Time", "Patient", "Patient ID", "Accession", "Modality", "Station", "MPPS", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, shown.map((i) => h("tr", { class: "wl-item", "data-id": i.ID, "data-today": i.ScheduledProcedureStepStartDate === today },
      h("td", {}, da(i.ScheduledProcedureStepStartDate)), h("td", {}, tm(i.ScheduledProcedureStepStartTime)),
      h("td", {}, pn(i.PatientName)), h("td", {}, i.PatientID), h("td", {}, i.AccessionNumber),
      h("td", {}, i.Modality), h("td", {}, i.ScheduledStationAETitle),
      h("td", { class: `mpps ${(i.MPPS || "").replace(/\s/g, "-").toLowerCase()}` }, i.MPPS || "scheduled"),
      h("td", {}, h("button", { class: "small edit", onclick: () => worklistForm(panel, i.ID) }, "edit"), " ",
        h("button", { class: "small danger remove", onclick: async () => {
          if (!confirm(`Remove worklist item ${i.ID}?`)) return;
          try { await request("DELETE", `/worklists/${enc(i.ID)}`); route(); } catch (e) { showError(e); }
        } }, "remove"))))));
  $app.replaceChildren(h("h1", {}, "Worklist"),
    h("div", { class: "actions" }, h("button", { id: "add-worklist", onclick: () => worklistForm(panel, null) }, "Add item…"),
      h("a", { href: all ? "#/worklist" : "#/worklist?all=1" }, all ? "today and upcoming only" : "show past items too")),
    panel, shown.length ? table : h("p", { class: "empty" }, "No scheduled item."));
}

async function worklistForm(panel, id) {
  let tags = {};
  if (id) tags = (await get(`/worklists/${enc(id)}`)).Tags || {};
  const step = (tags.ScheduledProcedureStepSequence || [])[0] || {};
  const form = h("form", { class: "fix", id: "worklist-form" }, h("h3", {}, id ? `Edit ${id}` : "New worklist item"),
    WL_FIELDS.map(([k, label, ph]) => h("label", {}, label,
      h("input", { name: k, value: (SPS.has(k) ? step[k] : tags[k]) || (k === "ScheduledProcedureStepStartDate" && !id ? isoDay(new Date()) : ""), placeholder: ph }))),
    h("div", {}, h("button", { type: "submit" }, "Save"), " ", h("button", { type: "button", onclick: () => panel.replaceChildren() }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // The same nesting and validation as `pacs-appliance worklist add` (tags_from_flat):
    // the step's keys go into the one ScheduledProcedureStepSequence item.
    const top = Object.assign({}, tags), sps = Object.assign({}, step);
    for (const [k, v] of new FormData(form)) {
      const value = String(v).trim();
      const target = SPS.has(k) ? sps : top;
      if (value) target[k] = k === "Modality" || k === "PatientSex" ? value.toUpperCase() : value;
      else delete target[k];
    }
    top.ScheduledProcedureStepSequence = [sps];
    try {
      if (id) await request("PUT", `/worklists/${enc(id)}`, { Tags: top });
      else await request("POST", "/worklists/create", { Tags: top });
      clearBanner();
      route();
    } catch (e) { showError(e); }
  });
  panel.replaceChildren(form);
}

// ------------------------------------------------------------------ system

const SHOWN_STATUS_KEYS = new Set(["version", "pid", "time", "started", "uptime", "name", "dicom_aet", "ports",
  "remote_access", "counts", "stored_since_start", "failed_since_start", "outcomes", "associations", "admission",
  "disk", "backups", "last_error", "errors_since_start", "worklist_items", "warnings", "http_authentication", "imports"]);

async function pageSystem() {
  const [s, history, audit] = await Promise.all([get("/status"), get("/status/disk-history").catch(() => []),
    optional("/audit?limit=20")]);
  const rows = [];
  const row = (k, v, cls) => rows.push(h("tr", { class: cls || "" }, h("th", {}, k), h("td", {}, v)));
  const c = s.counts || {};
  row("Version", `${s.version}, up ${duration(s.uptime)}`);
  row("DICOM", `AE title ${s.dicom_aet}, port ${s.ports.dicom}, ${s.associations} association(s) open`);
  row("Stored", `${c.patients ?? "?"} patients, ${c.studies ?? "?"} studies, ${c.series ?? "?"} series, ${c.instances ?? "?"} instances, ${bytes(c.bytes)}`);
  row("Since start", `${s.stored_since_start} received, ${s.failed_since_start} failed`);
  const adm = s.admission || {};
  if (Object.keys(adm).length) row("New objects", adm.accepting ? "accepted" : `REFUSED: ${adm.refusing}`, adm.accepting ? "" : "bad");
  if (s.worklist_items !== undefined) row("Worklist", `${s.worklist_items} item(s)`);
  const b = s.backups || {};
  const last = b.last_attempt, good = b.last_success;
  row("Last backup", last ? `${when(last.time)} ${last.ok ? "OK" : "FAILED"}: ${last.message}` : "never", last && !last.ok ? "bad" : "");
  if (good && last && !last.ok) row("Last good backup", when(good.time));
  row("Next backup", b.next ? when(b.next) : "not scheduled");
  if (s.http_authentication === false) {
    row("Warning", "HTTP authentication is OFF: anyone who reaches this port sees and changes patient data", "bad");
  }
  for (const r of s.imports || []) {
    row("Import", `${r.done}/${r.total || "?"} files, ${r.stored} stored, ${r.duplicates} already here, ${r.refused} refused (${bytes(r.bytes)}, ${Math.round(r.rate)} files/s)`);
  }
  for (const w of s.warnings || []) row("Warning", typeof w === "string" ? w : JSON.stringify(w), "bad");
  const err = s.last_error;
  row("Last error", err ? `${when(err.time)} ${err.message}` : "none", err ? "warn" : "");
  // Parts this page does not know by name (a send queue, an import's progress...) are
  // still shown, as they come, so a newer daemon's status is never hidden.
  const plain = (v) => (Array.isArray(v) ? v.map(plain).join("; ")
    : v && typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k.replace(/_/g, " ")}: ${plain(x)}`).join(", ")
    : String(v));
  const empty = (v) => v === null || v === undefined || (typeof v === "object" && !Object.keys(v).length);
  for (const k of Object.keys(s).filter((k) => !SHOWN_STATUS_KEYS.has(k) && !empty(s[k]))) {
    row(k[0].toUpperCase() + k.slice(1).replace(/_/g, " "), plain(s[k]), "extra");
  }

  const disk = s.disk;
  const fsCards = disk ? disk.filesystems.map((fs) => h("div", { class: `fs ${fs.level.toLowerCase()}` },
    h("div", { class: "fs-title" }, `${fs.roles.join(" + ")}: ${fs.path}`),
    h("div", { class: "bar" }, h("div", { class: "fill", style: `width:${Math.min(100, fs.percent).toFixed(1)}%` })),
    h("div", {}, `${fs.percent.toFixed(0)}% used, ${bytes(fs.free)} free of ${bytes(fs.total)}${fs.level === "OK" ? "" : ` — ${fs.level}`}`))) : [];
  const missing = disk ? (disk.missing || []).map((m) => h("p", { class: "bad" }, `${m.role} folder missing: ${m.path}`)) : [];
  const f = disk && disk.forecast;
  const forecast = f && f.bytes_per_day !== null
    ? `Growth ${bytes(f.bytes_per_day)}/day${f.days_left !== null ? `, full in ${Math.round(f.days_left)} days` : ""}`
    : "Growth: not enough data yet";
  $app.replaceChildren(h("h1", {}, "System"),
    h("section", { id: "disk" }, h("h2", {}, "Disk"), fsCards, missing, h("p", { id: "forecast" }, forecast),
      diskPlot(history, disk)),
    h("section", {}, h("h2", {}, "Status"), h("table", { class: "status", id: "status-table" }, h("tbody", {}, rows))),
    auditSection(audit) || "",
    h("p", { class: "muted" }, "Refreshed every 10 s. ", h("a", { href: "/metrics" }, "metrics"), " · ", h("a", { href: "/status.html" }, "plain status page")));
  const t = setTimeout(() => { if (parseHash().parts[0] === "system") route(); }, 10000);
  onLeave(() => clearTimeout(t));
}

// The last deletes and patient fixes (GET /audit, newest first): who, what, when, why.
function auditSection(entries) {
  if (!entries) return null;  // a daemon without the audit trail
  const uids = (u) => (u && typeof u === "object" && !Array.isArray(u)
    ? Object.entries(u).map(([level, uid]) => `${level} ${uid}`) : [].concat(u)).filter(Boolean).join(", ");
  return h("section", { id: "audit" }, h("h2", {}, "Deletes and corrections"),
    entries.length ? h("table", { class: "list audit" },
      h("thead", {}, h("tr", {}, ["Time (UTC)", "User", "Action", "Level", "UIDs", "Reason", "Images"].map((t) => h("th", {}, t)))),
      h("tbody", {}, entries.map((e) => h("tr", {},
        h("td", {}, typeof e.Time === "number" ? when(e.Time) : String(e.Time || "").replace("T", " ").replace("Z", "")),
        h("td", {}, e.User), h("td", {}, e.Action), h("td", {}, e.Level),
        h("td", { class: "uids" }, uids(e.UIDs)), h("td", {}, e.Reason), h("td", { class: "num" }, e.Instances)))))
      : h("p", { class: "empty" }, "None yet."));
}

// Used bytes of the storage filesystem over the samples (30 days), and the forecast
// line from now to full (or 30 days on), as an SVG drawn here.
function diskPlot(history, disk) {
  const W = 640, H = 180, L = 56, B = 24;
  const storage = (sample) => (sample.filesystems || []).find((fs) => fs.roles.includes("storage")) || sample.filesystems[0];
  const points = (history || []).filter((s) => s.filesystems && s.filesystems.length).map((s) => [s.time, storage(s).used, storage(s).total]);
  const now = Date.now() / 1000;
  const svg = (tag, attrs) => { const el = document.createElementNS("http://www.w3.org/2000/svg", tag); for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v); return el; };
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", id: "disk-plot", role: "img" });
  if (!points.length) {
    const text = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }); text.textContent = "no disk samples yet";
    root.append(text); return root;
  }
  const total = points[points.length - 1][2];
  const t0 = now - 30 * 86400, t1 = now + 30 * 86400;
  const x = (t) => L + (W - L - 8) * (t - t0) / (t1 - t0);
  const y = (v) => H - B - (H - B - 8) * v / total;
  root.append(svg("rect", { x: L, y: 8, width: W - L - 8, height: H - B - 8, class: "frame" }));
  for (const frac of [0, 0.5, 1]) {
    const label = svg("text", { x: L - 4, y: y(total * frac) + 4, "text-anchor": "end" }); label.textContent = bytes(total * frac);
    root.append(label, svg("line", { x1: L, x2: W - 8, y1: y(total * frac), y2: y(total * frac), class: "grid" }));
  }
  for (const [t, text] of [[t0, "30 days ago"], [now, "now"], [t1, "+30 days"]]) {
    const label = svg("text", { x: x(t), y: H - 6, "text-anchor": t === t0 ? "start" : t === t1 ? "end" : "middle" }); label.textContent = text;
    root.append(label);
  }
  root.append(svg("line", { x1: x(now), x2: x(now), y1: 8, y2: H - B, class: "now" }));
  root.append(svg("polyline", { points: points.map(([t, u]) => `${x(t).toFixed(1)},${y(u).toFixed(1)}`).join(" "), class: "used" }));
  for (const [t, u] of points.slice(-1)) root.append(svg("circle", { cx: x(t), cy: y(u), r: 3, class: "used-dot" }));
  const f = disk && disk.forecast;
  if (f && f.bytes_per_day) {
    const [tl, ul] = points[points.length - 1];
    const tEnd = Math.min(t1, tl + (total - ul) / f.bytes_per_day * 86400);
    root.append(svg("line", { x1: x(tl), y1: y(ul), x2: x(tEnd), y2: y(ul + f.bytes_per_day * (tEnd - tl) / 86400), class: "forecast" }));
  }
  return root;
}

// ------------------------------------------------------------------ routing

async function route() {
  cleanups.forEach((fn) => fn()); cleanups = [];
  stopPlayers();
  const { parts, query } = parseHash();
  const page = parts[0] || "studies";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page || (page === "study" && a.dataset.page === "studies")));
  try {
    if (page === "studies") await pageStudies(query);
    else if (page === "study" && parts[1]) await pageStudy(parts[1]);
    else if (page === "upload") pageUpload();
    else if (page === "worklist") await pageWorklist(query);
    else if (page === "system") await pageSystem();
    else $app.replaceChildren(h("h1", {}, "Not found"), h("a", { href: "#/studies" }, "Studies"));
  } catch (e) { showError(e); }
}

document.getElementById("server-name").textContent = SETTINGS.name;
document.title = `${SETTINGS.name} — pacs-appliance`;
window.addEventListener("hashchange", () => {
  if (keepBanner) keepBanner = false; else clearBanner();
  route();
});
route();
