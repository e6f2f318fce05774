// On-device analysis, the browser part: ONNX Runtime Web (WebAssembly) runs the exported model
// on the photo inside the page; the photo is never sent anywhere. Results are kept in this
// browser only (IndexedDB), until deleted.
import {
  camFromFeatureMap, chooseType, colourStatistics, decide, localize, mahalanobisScore,
  secondOpinionType, unservedType,
  normalize, overlay, pillowResize, prepareMahalanobis, resizeForModel, routeProbabilities,
  routerInput, servedProbabilities, shrinkLikeServer, smallMahalanobis,
} from "./core.js";

const MAX_PIXELS = 40_000_000;  // as the server (ServeSettings.max_pixels)
const MIN_SIDE = 32;
const HEATMAP_SIZE = 224;

export class OnDeviceError extends Error {
  constructor(key, params = {}) { super(key); this.key = key; this.params = params; }
}

let ortModule = null;
async function runtime(base) {
  if (!ortModule) {
    ortModule = await import(base + "ort.wasm.min.mjs");
    ortModule.env.wasm.wasmPaths = base;
    // Threads need a cross-origin isolated page (the server sends COOP + COEP); else one.
    ortModule.env.wasm.numThreads = globalThis.DERMALAB_ORT_THREADS
      || (globalThis.crossOriginIsolated
        ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1);
  }
  return ortModule;
}

// What the server offers for on-device use (null when nothing).
export async function available() {
  try {
    const res = await fetch("/v1/ondevice");
    if (!res.ok) return null;
    const body = await res.json();
    return body.available ? body : null;
  } catch (e) {
    return null;
  }
}

// An ONNX Runtime session (WebAssembly) on a model file's bytes.
async function createSession(runtimeBase, bytes) {
  const ort = await runtime(runtimeBase);
  const session = await ort.InferenceSession.create(new Uint8Array(bytes),
                                                    {executionProviders: ["wasm"]});
  return {ort, session};
}

// The float32 array ``name`` of a bundle, a view on its arrays.bin (``_pack`` in ondevice.py).
function arrayView(bundle, buffer, name) {
  const a = bundle.arrays[name];
  return new Float32Array(buffer, a.offset, a.shape.reduce((x, y) => x * y, 1));
}

const loaded = new Map();  // model name -> {bundle, session, mahalanobis, camWeight, kind}

// Load (once) a model: its bundle, arrays and ONNX file — the INT8 one when there is one.
export async function loadModel(info, runtimeBase, prefer = "int8") {
  const key = info.name + ":" + info.version;
  if (loaded.has(key)) return loaded.get(key);
  const [bundle, arrays] = await Promise.all([
    fetch(info.bundle).then((r) => r.json()),
    fetch(info.arrays).then((r) => r.arrayBuffer())]);
  const kind = info.files[prefer] ? prefer : "fp32";
  const modelBytes = await fetch(info.files[kind]).then((r) => r.arrayBuffer());
  const {ort, session} = await createSession(runtimeBase, modelBytes);
  const view = (name) => arrayView(bundle, arrays, name);
  const [k, d] = bundle.arrays[bundle.ood.means].shape;
  const model = {bundle, session, kind, ort,
                 mahalanobis: prepareMahalanobis(view(bundle.ood.means),
                                                 view(bundle.ood.precision), k, d),
                 camWeight: view(bundle.cam.weight)};
  loaded.set(key, model);
  return model;
}

let loadedRouter = null;  // {version, bundle, session, ort, weights}

// Load (once) the server's image-type router: its embedding model and logistic regression.
export async function loadRouter(info, runtimeBase) {
  if (loadedRouter && loadedRouter.version === info.version) return loadedRouter;
  const [bundle, arrays, modelBytes] = await Promise.all([
    fetch(info.bundle).then((r) => r.json()),
    fetch(info.arrays).then((r) => r.arrayBuffer()),
    fetch(info.files.fp32).then((r) => r.arrayBuffer())]);
  const {ort, session} = await createSession(runtimeBase, modelBytes);
  const view = (name) => arrayView(bundle, arrays, name);
  loadedRouter = {version: info.version, bundle, session, ort,
                  weights: {shift: view("shift"), scale: view("scale"), coef: view("coef"),
                            intercept: view("intercept")}};
  return loadedRouter;
}

// What kind of photo a decoded image is, as the server's router says: {type: probability}.
export async function route(img, router) {
  const b = router.bundle;
  const arr = routerInput(img.data, img.width, img.height, b.size);
  const x = normalize(arr, b.size, b.mean, b.std);
  const out = await router.session.run(
    {image: new router.ort.Tensor("float32", x, [1, 3, b.size, b.size])});
  const w = router.weights;
  const p = routeProbabilities(out.features.data, colourStatistics(arr), w.shift, w.scale,
                               w.coef, w.intercept);
  return Object.fromEntries(b.types.map((t, i) => [t, p[i]]));
}

export {chooseType};

// Decode a photo as the browser shows it (upright: EXIF orientation applied) into RGB.
export async function decode(file) {
  let bmp;
  try {
    bmp = await createImageBitmap(file, {imageOrientation: "from-image"});
  } catch (e) {
    throw new OnDeviceError("page.ondevice_unreadable", {filename: file.name});
  }
  const {width: w, height: h} = bmp;
  if (w * h > MAX_PIXELS) throw new OnDeviceError("page.ondevice_too_large", {filename: file.name});
  if (Math.min(w, h) < MIN_SIDE) throw new OnDeviceError("page.ondevice_too_small", {filename: file.name});
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(bmp, 0, 0);
  bmp.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  const jpeg = /jpe?g$/i.test(file.type) || /\.jpe?g$/i.test(file.name || "");
  return shrinkLikeServer(rgb, w, h, jpeg);
}

// The heat-map as a PNG data URL.
async function heatmapPng(img, model, fmap, dims, classIndex) {
  const [, c, h, w] = dims;
  const weight = model.camWeight.subarray(classIndex * c, (classIndex + 1) * c);
  const cam = camFromFeatureMap(fmap, c, h, w, weight, HEATMAP_SIZE);
  const shown = pillowResize(img.data, img.width, img.height, HEATMAP_SIZE, HEATMAP_SIZE);
  const canvas = new OffscreenCanvas(HEATMAP_SIZE, HEATMAP_SIZE);
  canvas.getContext("2d").putImageData(
    new ImageData(overlay(shown, cam, HEATMAP_SIZE), HEATMAP_SIZE, HEATMAP_SIZE), 0, 0);
  const blob = await canvas.convertToBlob({type: "image/png"});
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// The model's input for a decoded photo and its outputs (logits, features, feature map).
async function infer(img, model) {
  const b = model.bundle;
  const arr = resizeForModel(img.data, img.width, img.height, b.image_size, b.resize_mode);
  const x = normalize(arr, b.image_size, b.mean, b.std);
  const out = await model.session.run(
    {image: new model.ort.Tensor("float32", x, [1, 3, b.image_size, b.image_size])});
  return {arr, out};
}

// The model of the other kind of photo asked as well (``service.second_opinion``): its own
// referral, photo alone, its detectors aside as the router's are trusted.
async function secondOpinion(img, model) {
  const b = model.bundle;
  const {out} = await infer(img, model);
  const {probs} = servedProbabilities(b, out.logits.data, null);
  const f = decide(b, probs, 0, 0, (c) => b.texts.en.conditions[c].urgency, false, false);
  return {model: b.name, image_type: b.image_type, malignant_probability: f.malignant_probability,
          malignant_threshold: f.malignant_threshold, urgent: f.referral === "urgent"};
}

// Analyse a decoded photo with a loaded model: the facts of an analysis (as the server's,
// worded later by ``localize``), the heat-map and timings. ``routed``: the router's answer
// ({probabilities, modelDetectors, served, secondOpinionBelow}) when the server has one, else
// null. ``metadata``: the person's optional {age, sex, localization}, weighed as the server
// weighs it when the model was fitted with it. ``loadOther(type)``: the loaded model of
// another served type (or null when it cannot run here), for a second opinion.
export async function analyse(img, model, chosenBy, routed = null, metadata = null,
                              loadOther = null) {
  const b = model.bundle;
  const t0 = performance.now();
  const {arr, out} = await infer(img, model);
  const t1 = performance.now();
  const {probs, used} = servedProbabilities(b, out.logits.data, metadata);
  const ood = mahalanobisScore(out.features.data, model.mahalanobis);
  const colour = smallMahalanobis(colourStatistics(arr), b.colour.means, b.colour.precision);
  const en = b.texts.en.conditions;
  const routedNotSkin = routed ? chooseType(Object.keys(routed.probabilities),
                                            routed.probabilities, null)[0] === "not_skin"
    : null;
  // An answer that weighed metadata has its own "not sure" line (core/decision.py).
  const line = used.length && b.uncertain_threshold_metadata != null
    ? {...b, uncertain_threshold: b.uncertain_threshold_metadata} : b;
  // A kind of photo no served model was trained on is answered "not sure" (as the server).
  const unserved = routed ? unservedType(routed.served || [b.image_type], routed.probabilities,
                                         chosenBy) : null;
  // When the router is unsure of the kind of photo, the other model checks it too (as the
  // server: ``second_opinion_type``); it can only make the referral urgent.
  const otherType = routed && loadOther ? secondOpinionType(
    routed.served || [b.image_type],
    {image_type: routedNotSkin ? "not_skin" : b.image_type, chosen_by: chosenBy,
     probabilities: routed.probabilities, unserved}, routed.secondOpinionBelow) : null;
  const otherModel = otherType ? await loadOther(otherType) : null;
  const second = otherModel ? await secondOpinion(img, otherModel) : null;
  const facts = decide(unserved ? {...line, uncertain_threshold: Infinity} : line, probs, ood,
                       colour, (c) => en[c].urgency, routedNotSkin,
                       routed ? routed.modelDetectors : false, !!(second && second.urgent));
  facts.uncertain_threshold = line.uncertain_threshold;
  facts.heatmap_png = facts.verdict === "not_skin" ? null
    : await heatmapPng(img, model, out.feature_map.data, out.feature_map.dims, facts.top_index);
  facts.model = {name: b.name, image_type: b.image_type, precision: model.kind};
  facts.routing = {image_type: facts.verdict === "not_skin" ? "not_skin" : b.image_type,
                   chosen_by: chosenBy, on_device: true,
                   probabilities: routed ? routed.probabilities : null};
  if (unserved) facts.routing.unserved = unserved;
  if (second && facts.verdict !== "not_skin") facts.routing.second_opinion = second;
  facts.probabilities = probs;
  facts.metadata_used = used;
  facts.timing_ms = {model: t1 - t0, total: performance.now() - t0};
  return facts;
}

export {localize};

// -- this browser's own history (IndexedDB) --------------------------------------------------
const DB = "dermalab-ondevice";
const STORE = "analyses";

function db() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, {keyPath: "id"});
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(STORE, mode);
    const req = fn(t.objectStore(STORE));
    t.oncomplete = () => { d.close(); resolve(req ? req.result : undefined); };
    t.onerror = () => { d.close(); reject(t.error); };
  });
}

// Keep an analysis (its facts, the bundle's texts to word it, no photo).
export function keep(entry) { return tx("readwrite", (s) => s.put(entry)); }
export function history() {
  return tx("readonly", (s) => s.getAll()).then(
    (items) => items.sort((a, b) => b.created_at.localeCompare(a.created_at)));
}
export function forget(id) { return tx("readwrite", (s) => s.delete(id)); }
export function forgetAll() { return tx("readwrite", (s) => s.clear()); }
