import * as device from "/static/ondevice/run.js";
import {SITE, drawBodyMap, regionName} from "/static/bodymap.js";
import {reminderIcs} from "/static/reminder.js";

const $ = (id) => document.getElementById(id);
let chosen = null;
let current = null;  // the analysis shown, re-read in another language when it changes
let lang = localStorage.getItem("dermalab.lang") || "";
let M = {};  // the page's messages in the chosen language

// A message with its {fields} filled in.
function msg(key, params = {}) {
  return (M[key] || key).replace(/\{(\w+)\}/g, (_, k) => (k in params ? params[k] : ""));
}
// Dates and numbers in the person's own regional form of the page language: en-GB readers
// get day-month order, though the page text is plain "en".
function locale() {
  const own = (navigator.languages || [navigator.language]).find(
    (l) => l && lang && l.split("-")[0].toLowerCase() === lang);
  return own || lang || undefined;
}
const pct = (p) => new Intl.NumberFormat(locale(), {style: "percent",
                                                             maximumFractionDigits: 0}).format(p);
// Requests carry the chosen language; without a choice the browser's own Accept-Language
// decides on the server.
const headers = () => (lang ? {"Accept-Language": lang} : {});
// The session: the HttpOnly cookie authenticates; writes also carry the session's CSRF token.
let S = null;
const writeHeaders = () => ({...headers(),
  ...(S && S.csrf_token ? {"X-CSRF-Token": S.csrf_token} : {})});

// A private session of this device is made on the first visit, so the page works without an
// account; signing up or in later moves its analyses into the account.
async function ensureSession() {
  try {
    // ?optional=1: no session yet is 204, not a 401 logged as an error on every first visit.
    let res = await fetch("/v1/auth/session?optional=1");
    if (res.status === 204 || res.status === 401) {
      res = await fetch("/v1/auth/anonymous", {method: "POST", headers: {
        "X-Requested-With": "dermalab", "X-Dermalab-Page": "1"}});
    }
    S = res.ok ? await res.json() : null;
  } catch (e) {  // offline: the page still works on the device; the account waits
    S = null;
    renderAccount();
    $("account-status").textContent = msg("page.offline_account");
    return;
  }
  renderAccount();
}

let hasHistory = false;  // whether this device or account has anything stored
function renderAccount() {
  const open = S && S.mode === "open";
  const anon = S && S.anonymous;
  // A first-time visitor has nothing to download or delete: those appear with the first
  // analysis (an account always has them).
  $("export").hidden = anon && !hasHistory;
  $("delete-account").hidden = anon && !hasHistory;
  $("account-status").textContent = !S ? "" : open ? msg("page.open_mode")
    : anon ? msg("page.private_device") : msg("page.signed_in", {email: S.email || ""});
  $("account-form").hidden = !S || open || !anon;
  $("account-actions").hidden = !S || open;
  $("sign-out").hidden = !S || anon;
  $("sign-out-everywhere").hidden = !S || anon || open;
  $("delete-password-label").hidden = true;
}

async function credentials(path) {
  $("account-error").textContent = "";
  const res = await fetch(path, {method: "POST", headers: {...writeHeaders(),
    "Content-Type": "application/json", "X-Dermalab-Page": "1"}, body: JSON.stringify({email: $("email").value,
                                                              password: $("password").value})});
  const body = await res.json();
  if (!res.ok) { $("account-error").textContent = body.detail || msg("page.error_generic");
                 return; }
  S = body; $("password").value = ""; renderAccount(); loadHistory();
}
$("account-form").addEventListener("submit", (e) => { e.preventDefault();
                                                      credentials("/v1/auth/signup"); });
$("sign-in").addEventListener("click", () => credentials("/v1/auth/signin"));
$("sign-out").addEventListener("click", async () => {
  await fetch("/v1/auth/signout", {method: "POST", headers: writeHeaders()});
  S = null; current = null; $("result").hidden = true; $("spot-view").hidden = true;
  await ensureSession(); loadHistory();
});
$("sign-out-everywhere").addEventListener("click", async () => {
  await fetch("/v1/auth/signout-everywhere", {method: "POST", headers: writeHeaders()});
  S = null; current = null; $("result").hidden = true; $("spot-view").hidden = true;
  await ensureSession(); loadHistory();
});
$("delete-account").addEventListener("click", async () => {
  $("account-error").textContent = "";
  // An account asks for its password again (a device without an account has none).
  const account = S && !S.anonymous;
  if (account && $("delete-password-label").hidden) {
    $("delete-password-label").hidden = false; $("delete-password").focus(); return;
  }
  if (!window.confirm(msg("page.confirm_delete_account"))) return;
  const res = await fetch("/v1/account", account ? {method: "DELETE",
    headers: {...writeHeaders(), "Content-Type": "application/json"},
    body: JSON.stringify({password: $("delete-password").value})}
    : {method: "DELETE", headers: writeHeaders()});
  $("delete-password").value = "";
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    $("account-error").textContent = body.detail || msg("page.error_generic"); return;
  }
  S = null; current = null; $("result").hidden = true; $("spot-view").hidden = true;
  $("status").textContent = msg("page.deleted_account");
  await ensureSession(); loadHistory();
});

async function loadMessages() {
  // The chosen language in the address, not only in a header: the service worker keeps one
  // copy per address, so each language's texts are there offline.
  const res = await fetch("/v1/messages" + (lang ? "?lang=" + encodeURIComponent(lang) : ""),
                          {headers: headers()});
  if (!res.ok) return;
  const body = await res.json();
  lang = body.language;
  M = body.messages;
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => {
    el.textContent = msg(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-alt]").forEach((el) => {
    el.alt = msg(el.dataset.i18nAlt); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
    el.placeholder = msg(el.dataset.i18nPlaceholder); });
  fillAbout();
  // The body map names a spot after the place chosen, and gives the model the body site
  // when it weighs one (the "About you" site list).
  drawBodyMap($("body-map"), msg, (view, part) => {
    $("spot").value = regionName(view, part, msg);
    const site = $("site");
    if (!$("about-field").hidden && [...site.options].some((o) => o.value === SITE[part])) {
      site.value = SITE[part];
    }
  });
  const sel = $("lang"); sel.replaceChildren();
  Object.entries(body.languages).forEach(([code, name]) => {
    const o = text("option", name); o.value = code; o.selected = code === lang; sel.append(o);
  });
}
$("lang").addEventListener("change", async (e) => {
  lang = e.target.value;
  localStorage.setItem("dermalab.lang", lang);
  await loadMessages();
  renderAccount();
  if (shownLocal) {  // an on-device result: worded again here, from its kept facts
    render(device.localize(shownLocal.facts, shownLocal, lang || "en"), {scroll: false});
  } else if (current) {  // the result on screen, in the new language
    const res = await fetch("/v1/analyses/" + current, {headers: headers()});
    if (res.ok) render(await res.json(), {scroll: false});
  }
  loadHistory();
  loadLocalHistory();
});

// What the page accepts as a photo: an image type, or an image name a browser may not type
// (HEIC on some systems). Anything else is said at once, before an upload.
const IMAGE_NAME = /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|heif|avif)$/i;
function choose(file) {
  if (!file) return;
  $("result").hidden = true;  // the result on screen belongs to the previous photo
  const preview = $("preview");
  if (!(file.type.startsWith("image/") || IMAGE_NAME.test(file.name))) {
    chosen = null;
    preview.style.display = "none"; preview.removeAttribute("src");
    $("analyse").disabled = true;
    $("status").textContent = "";
    $("status").append(text("span", msg("page.not_an_image", {name: file.name}), "error"));
    return;
  }
  chosen = file;
  // A photo the browser cannot draw (HEIC in most browsers) is not shown as a broken image:
  // the server (and the on-device decoder, where it can) still reads it.
  preview.onerror = () => { preview.style.display = "none"; };
  preview.src = URL.createObjectURL(file);
  preview.style.display = "block";
  $("analyse").disabled = false;
  $("status").textContent = file.name;
}
$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function render(r, {scroll = true} = {}) {
  current = r.routing && r.routing.on_device ? null : r.id;
  if (!(r.routing && r.routing.on_device)) shownLocal = null;
  $("result").hidden = false;
  $("result").lang = r.language;
  $("verdict").textContent = r.verdict_text;
  const advice = r.quality && r.quality.text;  // what to do about the photo itself
  $("quality").hidden = !advice;
  $("quality").textContent = advice || "";
  $("routing").hidden = !r.routing;
  if (r.routing) $("routing").textContent = r.routing.text;
  const used = r.metadata_used || [];
  $("about-used").hidden = !used.length;
  $("about-used").textContent = used.length ? msg("page.metadata_used", {
    fields: used.map((f) => msg("page.field_" + f)).join(", ")}) : "";
  const ref = $("referral");
  ref.className = "referral " + (r.referral || "none");
  ref.textContent = r.referral_text;
  const local = r.routing && r.routing.on_device;
  // An on-device photo is not kept anywhere, nor is one found not to be of skin.
  const noPhoto = (local || r.photo_kept === false) && !chosen;
  $("photo").hidden = noPhoto;
  if (chosen) $("photo").src = URL.createObjectURL(chosen);
  else if (!noPhoto) $("photo").src = "/v1/analyses/" + encodeURIComponent(r.id) + "/photo";
  // The heat-map is an optional view of the photo, in the photo's own shape (the model saw
  // the photo squashed to a square; stretching the map back restores its proportions).
  // Without a photo to show (an on-device result reopened later), the map is shown alone.
  const heat = Boolean(r.heatmap_png);
  if (heat) $("heatmap").src = r.heatmap_png;
  const photoShown = !$("photo").hidden;
  $("heatmap").style.aspectRatio = "";
  $("heatmap").hidden = !(heat && !photoShown); $("heat-note").hidden = $("heatmap").hidden;
  $("heat-toggle").hidden = !(heat && photoShown);
  $("heat-toggle").setAttribute("aria-pressed", "false");
  $("heat-toggle").textContent = msg("page.show_heatmap");
  const bars = $("bars"); bars.replaceChildren();
  const info = $("info"); info.replaceChildren();
  if (!r.conditions.length) bars.append(text("p", msg("page.no_conditions"), "muted"));
  r.conditions.forEach((c) => {
    const bar = document.createElement("div"); bar.className = "bar";
    const label = document.createElement("div"); label.className = "label";
    label.append(text("span", c.name), text("span", pct(c.probability)));
    const track = document.createElement("div"); track.className = "track";
    const fill = document.createElement("div"); fill.className = "fill";
    fill.style.width = (c.probability * 100).toFixed(1) + "%";
    track.append(fill); bar.append(label, track); bars.append(bar);
    const d = document.createElement("details");
    d.append(text("summary", msg("page.about", {name: c.name})),
             text("p", c.description), text("p", msg("page.first_steps", {text: c.care})),
             text("p", msg("page.when_doctor", {text: c.see_doctor})));
    info.append(d);
  });
  $("result-disclaimer").textContent = r.disclaimer;
  renderLesion(r.lesion);
  $("spot-link").hidden = !r.spot || local;
  if (r.spot) {
    $("see-spot").textContent = msg("page.see_spot", {name: r.spot.name});
    $("see-spot").onclick = () => showSpot(r.spot.id);
  }
  showClinics(r.referral);
  if (scroll) {  // the answer is what the person waits for: bring it into view, then focus it
    $("result").scrollIntoView({behavior: "smooth", block: "start"});
    $("verdict").focus({preventScroll: true});
  }
}

function showHeatmap(on) {
  const photo = $("photo");
  if (on && photo.naturalWidth) {
    $("heatmap").style.aspectRatio = `${photo.naturalWidth} / ${photo.naturalHeight}`;
  }
  $("heatmap").hidden = !on; $("heat-note").hidden = !on; photo.hidden = on;
  $("heat-toggle").setAttribute("aria-pressed", String(on));
  $("heat-toggle").textContent = msg(on ? "page.hide_heatmap" : "page.show_heatmap");
}
$("heat-toggle").addEventListener("click", () => showHeatmap($("heatmap").hidden));

// The outline the segmenter drew and its measurements (descriptive, not diagnostic).
function renderLesion(lesion) {
  $("lesion-box").hidden = !lesion;
  const tb = $("lesion-table"); tb.replaceChildren();
  if (!lesion) return;
  $("outline").src = lesion.outline_png;
  const num = (x, d) => new Intl.NumberFormat(locale(),
                                              {maximumFractionDigits: d}).format(x);
  const rows = [
    ["page.m_area", pct(lesion.area_share)],
    ["page.m_asym", num(lesion.asymmetry_major, 2) + " / " + num(lesion.asymmetry_minor, 2)],
    ["page.m_border", num(lesion.compactness, 2)],
    ["page.m_colours", lesion.colours.map((c) => msg("page.colour_" + c)).join(", ") || "–"],
    ["page.m_diameter", msg("page.px", {n: num(lesion.diameter_px, 0)})],
  ];
  rows.forEach(([k, v]) => { const tr = document.createElement("tr");
    tr.append(text("td", msg(k)), text("td", v)); tb.append(tr); });
}

// -- the dermatologist finder: the position is asked for only when the person presses the
// button (the browser then asks for consent), used for one search and never stored.
let referral = null;
async function showClinics(ref) {
  referral = ref;
  $("clinics-box").hidden = !ref;
  $("clinic-list").replaceChildren();
  if (!ref) return;
  let res;
  try { res = await fetch("/v1/clinics/cities", {headers: headers()}); } catch (e) {
    $("clinic-advice").textContent = msg("page.offline_clinics");
    $("clinic-search").hidden = true;
    return;
  }
  if (!res.ok) return;
  const body = await res.json();
  $("clinic-advice").textContent = body.advice;
  $("clinic-search").hidden = !body.configured;
  const dl = $("city-names"); dl.replaceChildren();
  body.cities.forEach((c) => { const o = document.createElement("option"); o.value = c;
                               dl.append(o); });
}

async function findClinics(params) {
  const q = new URLSearchParams({...params, limit: "5", urgency: referral || "routine"});
  const list = $("clinic-list"); list.replaceChildren();
  const res = await fetch("/v1/clinics?" + q, {headers: headers()});
  const body = await res.json();
  if (!res.ok) { list.append(text("li", body.detail || msg("page.error_generic"), "error"));
                 return; }
  if (!body.items.length) list.append(text("li", msg("page.no_clinics"), "muted"));
  body.items.forEach((c) => {
    const li = document.createElement("li");
    li.append(text("strong", c.name), document.createTextNode(" – " + c.address + ", " + c.city
      + " · " + msg("page.distance", {km: c.distance_km.toFixed(1)})));
    if (c.urgent) li.append(document.createTextNode(" · " + msg("page.urgent_ok")));
    if (c.phone) { const a = text("a", c.phone); a.href = "tel:" + c.phone.replace(/\s/g, "");
                   li.append(document.createTextNode(" · "), a); }
    if (c.website && /^https?:\/\//.test(c.website)) {
      const a = text("a", msg("page.website")); a.href = c.website; a.rel = "noopener noreferrer";
      a.target = "_blank"; li.append(document.createTextNode(" · "), a); }
    if (c.hours) li.append(document.createTextNode(" · " + c.hours));
    list.append(li);
  });
}
$("use-location").addEventListener("click", () => {
  if (!navigator.geolocation) { $("clinic-list").replaceChildren(
    text("li", msg("page.location_failed"), "error")); return; }
  navigator.geolocation.getCurrentPosition(
    (pos) => findClinics({lat: pos.coords.latitude.toFixed(4),
                          lon: pos.coords.longitude.toFixed(4)}),
    () => $("clinic-list").replaceChildren(text("li", msg("page.location_failed"), "error")),
    {maximumAge: 600000, timeout: 15000});
});
$("city-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if ($("city").value.trim()) findClinics({city: $("city").value.trim()});
});

// -- a spot over time ---------------------------------------------------------------------------
async function loadSpots() {
  let res;
  try { res = await fetch("/v1/spots", {headers: headers()}); } catch (e) { return; }
  const ul = $("spots"); ul.replaceChildren();
  const dl = $("spot-names"); dl.replaceChildren();
  const items = res.ok ? (await res.json()).items : [];
  $("spots-empty").hidden = items.length > 0;
  const fmt = new Intl.DateTimeFormat(locale(), {dateStyle: "medium"});
  items.forEach((s) => {
    const o = document.createElement("option"); o.value = s.name; dl.append(o);
    const li = document.createElement("li");
    const b = text("button", s.name, "secondary"); b.type = "button";
    b.addEventListener("click", () => showSpot(s.id));
    const plural = new Intl.PluralRules(locale()).select(s.count) === "one" ? "one" : "other";
    li.append(b, document.createTextNode(" " + msg("page.spot_count_" + plural, {
      count: s.count, date: s.last_at ? fmt.format(new Date(s.last_at)) : "–"})));
    ul.append(li);
  });
}

let openSpot = null;  // the spot whose timeline is on screen
async function showSpot(id) {
  openSpot = id;
  const res = await fetch("/v1/spots/" + encodeURIComponent(id), {headers: headers()});
  if (!res.ok) { $("spot-view").hidden = true; openSpot = null; return; }
  const s = await res.json();
  $("spot-view").hidden = false;
  $("spot-view").lang = s.language;
  $("spot-title").textContent = msg("page.spot_title", {name: s.name});
  $("spot-warning").hidden = !s.warning;
  $("spot-warning").textContent = s.warning || "";
  $("spot-change").hidden = !s.change;
  $("spot-change").textContent = s.change || "";
  // The crossing warning already says "see a dermatologist" in red: the advice is not repeated.
  $("spot-advice").hidden = !s.advice_text || !!s.warning;
  $("spot-advice").textContent = s.advice_text || "";
  $("spot-advice").className = "referral " + (s.advice === "urgent" ? "urgent" : "routine");
  const fmt = new Intl.DateTimeFormat(locale(), {dateStyle: "medium",
                                                          timeStyle: "short"});
  showComparison(s.analyses.filter((a) => a.verdict !== "not_skin"), fmt);
  const tl = $("spot-timeline"); tl.replaceChildren();
  s.analyses.forEach((a) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = "/v1/analyses/" + encodeURIComponent(a.id) + "/photo";
    img.alt = msg("page.spot_photo_alt", {date: fmt.format(new Date(a.created_at))});
    const cap = document.createElement("figcaption");
    cap.append(text("div", fmt.format(new Date(a.created_at))),
               text("div", a.top_condition ? msg("page.top", {name: a.top_condition,
                 probability: pct(a.top_probability || 0)}) : msg("page.not_skin")));
    if (a.malignant_probability !== null) {
      cap.append(text("div", msg("page.malignant_p", {probability: pct(a.malignant_probability)}),
                      a.crossed ? "crossed" : ""));
    }
    fig.append(img, cap); tl.append(fig);
  });
  $("spot-disclaimer").textContent = s.disclaimer;
  $("spot-view").scrollIntoView({behavior: "smooth", block: "nearest"});
}

// The earlier and the latest photo of the open spot, one over the other: the slider uncovers
// the latest from the right (arrow keys move it; a range input is keyboard-operable).
function showComparison(shots, fmt) {
  $("spot-compare").hidden = shots.length < 2;
  if (shots.length < 2) return;
  const [a, b] = shots.slice(-2);
  const when = (x) => fmt.format(new Date(x.created_at));
  $("compare-before").src = "/v1/analyses/" + encodeURIComponent(a.id) + "/photo";
  $("compare-before").alt = msg("page.compare_before", {date: when(a)});
  $("compare-after").src = "/v1/analyses/" + encodeURIComponent(b.id) + "/photo";
  $("compare-after").alt = msg("page.compare_after", {date: when(b)});
  $("compare-caption").textContent = msg("page.compare_caption", {before: when(a),
                                                                 after: when(b)});
  setComparison();
}

function setComparison() {
  // CSSOM, not a style attribute: the Content Security Policy allows it
  $("compare-after").style.clipPath = `inset(0 0 0 ${$("compare-slider").value}%)`;
}
$("compare-slider").addEventListener("input", setComparison);

// 128 random bits as hex (crypto.randomUUID needs HTTPS; a page on a LAN address has none).
function randomId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)),
                    (b) => b.toString(16).padStart(2, "0")).join("");
}

// A monthly reminder to photograph the open spot again: a calendar file made here and
// downloaded, nothing sent anywhere (static/reminder.js).
$("spot-reminder").addEventListener("click", () => {
  const ics = reminderIcs({from: new Date(), everyMonths: 1, summary: msg("page.reminder_summary"),
                           description: msg("page.reminder_description"),
                           uid: randomId() + "@dermalab"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([ics], {type: "text/calendar"}));
  a.download = "dermalab-reminder.ics";
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
});

async function analyse() {
  if (!chosen) return;
  if (!$("about-field").hidden && !$("age").checkValidity()) {  // the server's 0-120 years
    $("status").textContent = ""; $("status").append(text("span", msg("page.age_invalid"),
                                                          "error"));
    return;
  }
  if (onDevice && $("ondevice").checked) return analyseOnDevice();
  $("analyse").disabled = true;
  $("status").textContent = msg("page.analysing");
  const form = new FormData(); form.append("file", chosen, chosen.name);
  const spot = $("spot").value.trim();
  if (spot) form.append("spot", spot);
  if (!$("type-field").hidden) form.append("image_type", $("image-type").value);
  const about = aboutRow();
  if (about) {
    for (const [field, id] of ABOUT) if (about[field] !== undefined) form.append(id, about[field]);
  }
  try {
    await ready;
    const res = await fetch("/v1/analyses", {method: "POST", body: form,
                                              headers: writeHeaders()});
    const body = await res.json();
    if (!res.ok) { $("status").textContent = ""; $("status").append(
      text("span", body.detail || msg("page.error_generic"), "error")); return; }
    $("status").textContent = msg("page.done");
    $("spot").value = "";  // the next photo may be another spot: it is named anew
    render(body);
    loadHistory();
  } catch (e) {
    // Offline: say so, and where the model can run on this device, say that it works here.
    $("status").textContent = msg("page.error_network") + (onDevice && onDevice.models
      && onDevice.models.length ? " " + msg("page.error_network_ondevice") : "");
  } finally {
    $("analyse").disabled = false;
  }
}
$("analyse").addEventListener("click", analyse);

// -- on-device analysis: the model runs in this browser and the photo is never uploaded -------
let onDevice = null;  // what the server offers for it (null: nothing)
let shownLocal = null;  // the on-device analysis on screen (its facts and texts)

function userType() {
  return $("type-field").hidden ? "auto" : $("image-type").value;
}

// The model for a photo: the person's word, else (with the server's router, run in this page)
// the router's most probable served type, else the clinical-photo model when there is one (on
// a phone, that is the usual photo).
function localModel(probabilities = null) {
  const models = onDevice.models;
  if (probabilities) {
    const [type, by] = device.chooseType(models.map((m) => m.image_type), probabilities,
                                         userType());
    return [models.find((m) => m.image_type === type), by];
  }
  const byType = models.find((m) => m.image_type === userType());
  if (byType) return [byType, "user"];
  return [models.find((m) => m.image_type === "clinical") || models[0],
          models.length > 1 ? "default" : "single"];
}

async function analyseOnDevice() {
  $("analyse").disabled = true;
  $("status").textContent = msg("page.ondevice_loading");
  try {
    const img = await device.decode(chosen);
    let routed = null;
    if (onDevice.router) {
      const router = await device.loadRouter(onDevice.router, onDevice.runtime);
      routed = {probabilities: await device.route(img, router),
                modelDetectors: router.bundle.model_detectors,
                secondOpinionBelow: router.bundle.second_opinion_below,
                served: onDevice.models.map((m) => m.image_type)};
    }
    const [info, chosenBy] = localModel(routed && routed.probabilities);
    const model = await device.loadModel(info, onDevice.runtime);
    $("status").textContent = msg("page.analysing");
    const other = (type) => {
      const m = onDevice.models.find((x) => x.image_type === type);
      return m ? device.loadModel(m, onDevice.runtime) : null;
    };
    const facts = await device.analyse(img, model, chosenBy, routed, aboutRow(), other);
    const entry = {id: crypto.randomUUID(), created_at: new Date().toISOString(),
                   filename: chosen.name, facts: {...facts, id: undefined},
                   texts: model.bundle.texts, image_type: model.bundle.image_type};
    entry.facts.id = entry.id;
    entry.facts.created_at = entry.created_at;
    await device.keep(entry);
    shownLocal = entry;
    // Spots live on the server; an analysis kept on this device is not filed under one.
    const spotTyped = $("spot").value.trim() !== "";
    $("status").textContent = spotTyped ? msg("page.ondevice_no_spot") : msg("page.done");
    render(device.localize(entry.facts, entry, lang || "en"));
    loadLocalHistory();
  } catch (e) {
    $("status").textContent = "";
    $("status").append(text("span", e instanceof device.OnDeviceError
      ? msg(e.key, e.params) : msg("page.ondevice_failed"), "error"));
    if (!(e instanceof device.OnDeviceError)) console.error(e);
  } finally {
    $("analyse").disabled = false;
  }
}

async function loadLocalHistory() {
  let items = [];
  try { items = await device.history(); } catch (e) { items = []; }
  $("local-section").hidden = !onDevice && !items.length;
  $("local-empty").hidden = items.length > 0;
  $("forget-local").hidden = !items.length;
  const tbody = $("local-history"); tbody.replaceChildren();
  const fmt = new Intl.DateTimeFormat(locale(), {dateStyle: "short",
                                                          timeStyle: "short"});
  items.forEach((a) => {
    const r = device.localize(a.facts, a, lang || "en");
    const top = r.conditions[0];
    const what = !top ? msg("page.not_skin") : msg(
      r.verdict === "uncertain" ? "page.not_sure" : "page.top",
      {name: top.name, probability: pct(top.probability)});
    const open = text("button", what, "secondary");
    open.addEventListener("click", () => { chosen = null; shownLocal = a; render(r); });
    const del = text("button", msg("page.delete"), "secondary");
    del.addEventListener("click", async () => {
      await device.forget(a.id);
      if (shownLocal && shownLocal.id === a.id) { shownLocal = null; $("result").hidden = true; }
      loadLocalHistory();
    });
    const tdWhat = document.createElement("td"); tdWhat.append(open);
    const tdDel = document.createElement("td"); tdDel.append(del);
    const tr = document.createElement("tr");
    tr.append(text("td", fmt.format(new Date(a.created_at))), tdWhat,
              text("td", msg("page.ref_" + (r.referral || "none"))), tdDel);
    tbody.append(tr);
  });
}
$("forget-local").addEventListener("click", async () => {
  await device.forgetAll();
  if (shownLocal) { shownLocal = null; $("result").hidden = true; }
  loadLocalHistory();
});
// With on-device analysis on, the models (and the router, which may pick any of them) are
// fetched and kept by the service worker at once, so they are ready, and usable offline,
// before the first photo.
async function warmModel() {
  if (!onDevice || !$("ondevice").checked) return;
  try {
    await controlled();
    if (onDevice.router) {
      await device.loadRouter(onDevice.router, onDevice.runtime);
      for (const m of onDevice.models) await device.loadModel(m, onDevice.runtime);
    } else {
      await device.loadModel(localModel()[0], onDevice.runtime);
    }
    $("ondevice-field").dataset.ready = "1";
  } catch (e) {
    console.error(e);
  }
}
$("ondevice").addEventListener("change", () => {
  localStorage.setItem("dermalab.ondevice", $("ondevice").checked ? "1" : "");
  warmModel();
});
$("image-type").addEventListener("change", warmModel);
device.available().then((offer) => {
  onDevice = offer;
  $("ondevice-field").hidden = !offer;
  $("ondevice-note").hidden = !offer;
  if (offer) $("ondevice").checked = localStorage.getItem("dermalab.ondevice") === "1";
  loadLocalHistory();
  warmModel();
});
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js").catch((e) => console.error(e));
}
// Resolves once the service worker handles this page's requests (on a first visit it takes
// over a moment after the page loads), so what is fetched next is kept for offline use.
function controlled() {
  if (!("serviceWorker" in navigator) || navigator.serviceWorker.controller) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    navigator.serviceWorker.addEventListener("controllerchange", resolve, {once: true});
    setTimeout(resolve, 10000);  // no worker (e.g. a private window): load without it
  });
}

async function loadHistory() {
  loadSpots();
  let res;
  try { res = await fetch("/v1/analyses?limit=20", {headers: headers()}); } catch (e) { return; }
  if (!res.ok) return;
  const page = await res.json();
  const tbody = $("history"); tbody.replaceChildren();
  $("history-empty").hidden = page.items.length > 0;
  hasHistory = page.items.length > 0;
  renderAccount();
  const fmt = new Intl.DateTimeFormat(locale(), {dateStyle: "short",
                                                          timeStyle: "short"});
  page.items.forEach((a) => {
    const tr = document.createElement("tr");
    const top = {name: a.top_condition, probability: pct(a.top_probability || 0)};
    const what = a.top_condition ? msg(a.verdict === "uncertain" ? "page.not_sure" : "page.top",
                                       top) : msg("page.not_skin");
    const del = text("button", msg("page.delete"), "secondary");
    del.addEventListener("click", async () => {
      if (!window.confirm(msg("page.confirm_delete"))) return;
      const res = await fetch("/v1/analyses/" + a.id, {method: "DELETE",
                                                       headers: writeHeaders()});
      if (!res.ok) return;
      // Nothing on screen keeps showing the deleted photo.
      if (current === a.id) { current = null; $("result").hidden = true; }
      if (openSpot) showSpot(openSpot);
      loadHistory(); });
    const td = document.createElement("td"); td.append(del);
    tr.append(text("td", fmt.format(new Date(a.created_at))),
              text("td", a.spot ? what + " · " + a.spot : what),
              text("td", msg("page.ref_" + (a.referral || "none"))), td);
    tbody.append(tr);
  });
}
// Uploads wait for the session: a photo chosen in the first moments would otherwise be sent
// before the device session exists.
const ready = loadMessages().then(ensureSession);
ready.then(loadHistory);
// The optional age / sex / body site, when a served model weighs them: the choices are the
// ones that model knows, labelled in the page's language.
let aboutInputs = null;
// Each metadata field and its input (the API's form field has the input's name).
const ABOUT = [["age", "age"], ["sex", "sex"], ["localization", "site"]];
// What the person gave ({age, sex, localization}, each only when given), or null.
function aboutRow() {
  if ($("about-field").hidden) return null;
  const row = {};
  for (const [field, id] of ABOUT) {
    const v = $(id).value.trim();
    if (v) row[field] = v;
  }
  return Object.keys(row).length ? row : null;
}
function fillAbout() {
  if (!aboutInputs) return;
  const fill = (id, values, prefix) => {
    const sel = $(id); const keep = sel.value; sel.replaceChildren();
    const none = text("option", msg("page.not_given")); none.value = ""; sel.append(none);
    values.forEach((v) => {
      const o = text("option", M[prefix + v] || v); o.value = v; sel.append(o); });
    sel.value = keep;
  };
  fill("sex", aboutInputs.sexes, "page.sex_");
  fill("site", aboutInputs.sites, "page.site_");
  ABOUT.forEach(([f, id]) => {
    $(id).closest("label").hidden = !aboutInputs.fields.includes(f); });
}
// With a model for each kind of photo, the person may say how theirs was taken.
fetch("/healthz").then((r) => r.json()).then((h) => {
  $("type-field").hidden = !(h.models && h.models.length > 1);
  aboutInputs = h.metadata || null;
  $("about-field").hidden = !aboutInputs;
  ready.then(fillAbout);
}).catch(() => {});
