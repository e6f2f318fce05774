const $ = (id) => document.getElementById(id);
let chosen = null;
let current = null;  // the analysis shown, re-read in another language when it changes
let lang = localStorage.getItem("dermalab.lang") || "";
let M = {};  // the page's messages in the chosen language

// A message with its {fields} filled in.
function msg(key, params = {}) {
  return (M[key] || key).replace(/\{(\w+)\}/g, (_, k) => (k in params ? params[k] : ""));
}
const pct = (p) => new Intl.NumberFormat(lang || undefined, {style: "percent",
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
  let res = await fetch("/v1/auth/session");
  if (res.status === 401) {
    res = await fetch("/v1/auth/anonymous", {method: "POST", headers: {
      "X-Requested-With": "dermalab", "X-Dermalab-Page": "1"}});
  }
  S = res.ok ? await res.json() : null;
  renderAccount();
}

function renderAccount() {
  const open = S && S.mode === "open";
  const anon = S && S.anonymous;
  $("account-status").textContent = !S ? "" : open ? msg("page.open_mode")
    : anon ? msg("page.private_device") : msg("page.signed_in", {email: S.email || ""});
  $("account-form").hidden = !S || open || !anon;
  $("account-actions").hidden = !S || open;
  $("sign-out").hidden = !S || anon;
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
  S = null; current = null; $("result").hidden = true;
  await ensureSession(); loadHistory();
});
$("delete-account").addEventListener("click", async () => {
  if (!window.confirm(msg("page.confirm_delete_account"))) return;
  const res = await fetch("/v1/account", {method: "DELETE", headers: writeHeaders()});
  if (!res.ok) return;
  S = null; current = null; $("result").hidden = true;
  $("status").textContent = msg("page.deleted_account");
  await ensureSession(); loadHistory();
});

async function loadMessages() {
  const res = await fetch("/v1/messages", {headers: headers()});
  if (!res.ok) return;
  const body = await res.json();
  lang = body.language;
  M = body.messages;
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => {
    el.textContent = msg(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-alt]").forEach((el) => {
    el.alt = msg(el.dataset.i18nAlt); });
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
  if (current) {  // the result on screen, in the new language
    const res = await fetch("/v1/analyses/" + current, {headers: headers()});
    if (res.ok) render(await res.json());
  }
  loadHistory();
});

function choose(file) {
  if (!file) return;
  chosen = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").style.display = "block";
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

function render(r) {
  current = r.id;
  $("result").hidden = false;
  $("result").lang = r.language;
  $("verdict").textContent = r.verdict_text;
  const ref = $("referral");
  ref.className = "referral " + (r.referral || "none");
  ref.textContent = r.referral_text;
  $("photo").src = chosen ? URL.createObjectURL(chosen)
    : "/v1/analyses/" + encodeURIComponent(r.id) + "/photo";
  $("heat-box").style.display = r.heatmap_png ? "" : "none";
  if (r.heatmap_png) $("heatmap").src = r.heatmap_png;
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
}

async function analyse() {
  if (!chosen) return;
  $("analyse").disabled = true;
  $("status").textContent = msg("page.analysing");
  const form = new FormData(); form.append("file", chosen, chosen.name);
  try {
    const res = await fetch("/v1/analyses", {method: "POST", body: form,
                                              headers: writeHeaders()});
    const body = await res.json();
    if (!res.ok) { $("status").textContent = ""; $("status").append(
      text("span", body.detail || msg("page.error_generic"), "error")); return; }
    $("status").textContent = msg("page.done");
    render(body);
    loadHistory();
  } catch (e) {
    $("status").textContent = msg("page.error_network");
  } finally {
    $("analyse").disabled = false;
  }
}
$("analyse").addEventListener("click", analyse);

async function loadHistory() {
  const res = await fetch("/v1/analyses?limit=20", {headers: headers()});
  if (!res.ok) return;
  const page = await res.json();
  const tbody = $("history"); tbody.replaceChildren();
  $("history-empty").hidden = page.items.length > 0;
  const fmt = new Intl.DateTimeFormat(lang || undefined, {dateStyle: "short",
                                                          timeStyle: "short"});
  page.items.forEach((a) => {
    const tr = document.createElement("tr");
    const top = {name: a.top_condition, probability: pct(a.top_probability || 0)};
    const what = a.top_condition ? msg(a.verdict === "uncertain" ? "page.not_sure" : "page.top",
                                       top) : msg("page.not_skin");
    const del = text("button", msg("page.delete"), "secondary");
    del.addEventListener("click", async () => {
      await fetch("/v1/analyses/" + a.id, {method: "DELETE", headers: writeHeaders()});
      loadHistory(); });
    const td = document.createElement("td"); td.append(del);
    tr.append(text("td", fmt.format(new Date(a.created_at))), text("td", what),
              text("td", msg("page.ref_" + (a.referral || "none"))), td);
    tbody.append(tr);
  });
}
loadMessages().then(ensureSession).then(loadHistory);
