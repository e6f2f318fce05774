// The page's service worker: after one visit the page, ONNX Runtime Web and (once on-device
// analysis has been used or switched on) the model are kept in this browser, so on-device
// analysis works with the network off. Files that never change under their URL (the model
// files carry their version, ?v=..., and ONNX Runtime's files are those of the version this
// cache is named after — the server writes it in) come from the cache first; everything else
// from the network first, the cache only when offline, so a new page or model list reaches
// the person as soon as they are online. Nothing personal is cached — no analysis, photo,
// account or session response; only the public files below.
const CACHE = "dermalab-ort-unknown";
const SHELL = ["/", "/static/app.js", "/static/reminder.js", "/static/bodymap.js", "/static/ondevice/core.js", "/static/ondevice/run.js",
               "/manifest.webmanifest", "/static/icon-192.png", "/v1/ondevice",
               "/v1/messages", "/healthz",
               "/ort/ort.wasm.min.mjs", "/ort/ort-wasm-simd-threaded.mjs",
               "/ort/ort-wasm-simd-threaded.wasm"];
const PUBLIC = [/^\/$/, /^\/static\//, /^\/ort\//, /^\/v1\/ondevice(\/|$)/, /^\/v1\/messages$/,
                /^\/healthz$/, /^\/manifest\.webmanifest$/];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).catch(() => {})
    .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((keys) => Promise.all(
    keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin
      || !PUBLIC.some((re) => re.test(url.pathname))) return;  // the network, as usual
  const network = () => fetch(event.request).then((res) => {
    if (res.ok) {
      const copy = res.clone();
      caches.open(CACHE).then((c) => c.put(event.request, copy));
    }
    return res;
  });
  const cached = () => caches.match(event.request, {ignoreVary: true});
  const immutable = url.searchParams.has("v") || url.pathname.startsWith("/ort/");
  event.respondWith(immutable
    ? cached().then((hit) => hit || network())
    : network().catch(() => cached().then((hit) => hit || Response.error())));
});
