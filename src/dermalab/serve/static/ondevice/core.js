// On-device analysis, the pure part: the model's preprocessing, the calibrated probabilities,
// the "not skin" detectors, the decision rules, the heat-map and the wording — each the
// JavaScript twin of a Python function, tested against it on fixed inputs
// (tests/serve/test_ondevice_js.py runs tests/js/ with Node). No DOM here, so Node can load it.

// -- resizing exactly as Pillow does (Image.resize, BICUBIC with reducing_gap=3 for the models,
// BILINEAR without it for the image-type router) -----------------------------------------------
// Pillow's Resample.c: a separable convolution, horizontal pass first, with the kernel widened
// by the scale when shrinking (antialiasing), coefficients in fixed point with 22 fraction bits
// and each pass rounded to uint8.
const PRECISION_BITS = 22;
const BICUBIC_A = -0.5;
const BICUBIC_SUPPORT = 2.0;

function bicubic(x) {
  x = Math.abs(x);
  if (x < 1.0) return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * BICUBIC_A;
  return 0.0;
}

function bilinear(x) {
  x = Math.abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's filters: the kernel and its support (in input pixels at scale 1).
const FILTERS = {bicubic: [bicubic, BICUBIC_SUPPORT], bilinear: [bilinear, 1.0]};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: for each output pixel the first input
// pixel, how many, and their fixed-point weights.
function coefficients(inSize, in0, in1, outSize, filter) {
  const [kernel, filterSupport] = FILTERS[filter];
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filterSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      w[x] = kernel((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS)
                                            : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return {bounds, kk, ksize};
}

function clip8(ss) {
  if (ss <= 0) return 0;
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v > 255 ? 255 : v;
}

// Resize interleaved RGB (3 bytes a pixel) ``w x h`` to ``ow x oh`` from the source box
// ``[x0, y0, x1, y1]`` (fractional), as Pillow's ImagingResampleInner.
function resample(src, w, h, ow, oh, box, filter = "bicubic") {
  const [x0, y0, x1, y1] = box;
  const needH = ow !== w || x0 !== 0 || x1 !== ow;
  const needV = oh !== h || y0 !== 0 || y1 !== oh;
  const hc = coefficients(w, x0, x1, ow, filter);
  const vc = coefficients(h, y0, y1, oh, filter);
  let img = src;
  let iw = w;
  let rowOffset = 0;
  const yFirst = vc.bounds[0];
  const yLast = vc.bounds[oh * 2 - 2] + vc.bounds[oh * 2 - 1];
  if (needH) {
    const rows = yLast - yFirst;
    const tmp = new Uint8Array(ow * rows * 3);
    for (let y = 0; y < rows; y++) {
      const inRow = (y + yFirst) * w * 3;
      for (let xx = 0; xx < ow; xx++) {
        const xmin = hc.bounds[xx * 2];
        const xmax = hc.bounds[xx * 2 + 1];
        const k = xx * hc.ksize;
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < xmax; x++) ss += src[inRow + (x + xmin) * 3 + c] * hc.kk[k + x];
          tmp[(y * ow + xx) * 3 + c] = clip8(ss);
        }
      }
    }
    img = tmp;
    iw = ow;
    rowOffset = yFirst;
  }
  if (!needV) return needH ? img : Uint8Array.from(img);
  const out = new Uint8Array(ow * oh * 3);
  for (let yy = 0; yy < oh; yy++) {
    const ymin = vc.bounds[yy * 2] - rowOffset;
    const ymax = vc.bounds[yy * 2 + 1];
    const k = yy * vc.ksize;
    for (let xx = 0; xx < ow; xx++) {
      for (let c = 0; c < 3; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += img[((y + ymin) * iw + xx) * 3 + c] * vc.kk[k + y];
        out[(yy * ow + xx) * 3 + c] = clip8(ss);
      }
    }
  }
  return out;
}

// Pillow's Image.reduce: the mean of each ``fx x fy`` block (rounded; the last, partial blocks
// average the pixels they have).
export function reduce(src, w, h, fx, fy) {
  const ow = Math.ceil(w / fx);
  const oh = Math.ceil(h / fy);
  const out = new Uint8Array(ow * oh * 3);
  for (let yy = 0; yy < oh; yy++) {
    const y1 = Math.min(h, (yy + 1) * fy);
    for (let xx = 0; xx < ow; xx++) {
      const x1 = Math.min(w, (xx + 1) * fx);
      const n = (y1 - yy * fy) * (x1 - xx * fx);
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let y = yy * fy; y < y1; y++) {
          for (let x = xx * fx; x < x1; x++) s += src[(y * w + x) * 3 + c];
        }
        out[(yy * ow + xx) * 3 + c] = Math.floor((s + Math.floor(n / 2)) / n);
      }
    }
  }
  return {data: out, width: ow, height: oh};
}

// ``Image.resize((ow, oh), BICUBIC, reducing_gap=3.0)``: a large shrink first reduces by whole
// blocks, then resamples the rest of the way. ``filter`` "bilinear" with ``reducingGap`` null is
// ``Image.resize((ow, oh), BILINEAR)``.
export function pillowResize(src, w, h, ow, oh, filter = "bicubic", reducingGap = 3.0) {
  if (ow === w && oh === h) return Uint8Array.from(src);
  const fx = reducingGap ? Math.trunc(w / ow / reducingGap) || 1 : 1;
  const fy = reducingGap ? Math.trunc(h / oh / reducingGap) || 1 : 1;
  if (fx > 1 || fy > 1) {
    const r = reduce(src, w, h, fx, fy);
    return resample(r.data, r.width, r.height, ow, oh, [0, 0, w / fx, h / fy], filter);
  }
  return resample(src, w, h, ow, oh, [0, 0, w, h], filter);
}

// Python's round(): halves to even.
export function pyRound(x) {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// dermalab.data.images.resize_rgb: ``squash``, ``pad`` (black borders) or ``crop`` (centre).
export function resizeForModel(src, w, h, size, mode) {
  if (mode === "squash" || w === h) return pillowResize(src, w, h, size, size);
  const out = new Uint8Array(size * size * 3);
  if (mode === "pad") {
    const scale = size / Math.max(w, h);
    const nw = Math.max(1, pyRound(w * scale));
    const nh = Math.max(1, pyRound(h * scale));
    const inner = pillowResize(src, w, h, nw, nh);
    const left = Math.floor((size - nw) / 2);
    const top = Math.floor((size - nh) / 2);
    for (let y = 0; y < nh; y++) {
      out.set(inner.subarray(y * nw * 3, (y + 1) * nw * 3), ((y + top) * size + left) * 3);
    }
    return out;
  }
  if (mode !== "crop") throw new Error(`unknown resize mode ${mode}`);
  const scale = size / Math.min(w, h);
  const nw = Math.max(size, pyRound(w * scale));
  const nh = Math.max(size, pyRound(h * scale));
  const inner = pillowResize(src, w, h, nw, nh);
  const left = Math.floor((nw - size) / 2);
  const top = Math.floor((nh - size) / 2);
  for (let y = 0; y < size; y++) {
    const from = ((y + top) * nw + left) * 3;
    out.set(inner.subarray(from, from + size * 3), y * size * 3);
  }
  return out;
}

// What dermalab.serve.service.decode_upload does to a large photo before the model sees it:
// a JPEG is decoded at 1/2, 1/4 or 1/8 scale still covering ``side`` pixels (libjpeg's draft
// mode; a block mean here, which is close but not bit-exact), then any photo whose short side
// is at least twice ``side`` is block-reduced.
export function shrinkLikeServer(src, w, h, isJpeg, side = 1024) {
  let img = {data: src, width: w, height: h};
  if (isJpeg) {
    const scale = Math.min(Math.floor(w / side), Math.floor(h / side));
    const a = [8, 4, 2, 1].find((s) => scale >= s) || 1;
    if (a > 1) img = reduce(src, w, h, a, a);
  }
  const factor = Math.floor(Math.min(img.width, img.height) / side);
  if (factor >= 2) img = reduce(img.data, img.width, img.height, factor, factor);
  return img;
}

// dermalab.data.images.normalize_batch for one image: NCHW float32 ``(x / 255 - mean) / std``.
export function normalize(rgb, size, mean, std) {
  const n = size * size;
  const out = new Float32Array(3 * n);
  const m = mean.map(Math.fround);
  const s = std.map(Math.fround);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const x = Math.fround(rgb[i * 3 + c] / 255);
      out[c * n + i] = Math.fround(Math.fround(x - m[c]) / s[c]);
    }
  }
  return out;
}

// -- probabilities --------------------------------------------------------------------------
// Temperature-scaled softmax, softmax(z / T) (Guo et al., ICML 2017), in float64.
export function softmax(logits, temperature = 1.0) {
  const z = Array.from(logits, (v) => v / temperature);
  const top = Math.max(...z);
  const e = z.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// -- patient metadata beside the image (dermalab.core.metadata, MetadataModel) ---------------
// The same encoding: age centred (a - 50) / 20, its square, a one-hot band and a missing flag;
// one-hot sex and body site, each with a missing flag (an unseen value counts as missing).
const AGE_EDGES = [30, 45, 60, 75];
const MISSING = new Set(["", "unknown", "none", "nan"]);

function category(v) {
  if (v === null || v === undefined) return null;
  const s = String(v).trim().toLowerCase();
  return MISSING.has(s) ? null : s;
}

function ageOf(row) {
  if (row.age_missing || row.age === null || row.age === undefined || row.age === "") return null;
  const a = Number(row.age);
  return Number.isFinite(a) ? a : null;
}

export function encodeMetadata(mm, row) {
  const x = [];
  if (mm.fields.includes("age")) {
    const block = new Array(8).fill(0);
    const a = ageOf(row);
    if (a === null) block[7] = 1;
    else {
      const c = (a - 50) / 20;
      block[0] = c; block[1] = c * c;
      block[2 + AGE_EDGES.filter((e) => e <= a).length] = 1;
    }
    x.push(...block);
  }
  for (const [name, values] of [["sex", mm.sexes], ["localization", mm.sites]]) {
    if (!mm.fields.includes(name)) continue;
    const block = new Array(values.length + 1).fill(0);
    const j = values.indexOf(category(row[name]) ?? "");
    block[j < 0 ? values.length : j] = 1;
    x.push(...block);
  }
  return x;
}

// The fields of ``row`` the model weighs that are present (MetadataModel.given).
export function metadataGiven(mm, row) {
  const present = {age: ageOf(row) !== null, sex: category(row.sex) !== null,
                   localization: category(row.localization) !== null};
  return mm.fields.filter((f) => present[f]);
}

// Fused logits z / T + w (log p(y | m) - log prior) (MetadataModel.fuse on z / T).
export function fuseMetadata(logits, temperature, mm, row) {
  const x = encodeMetadata(mm, row);
  const z = mm.coef.map((w, k) => w.reduce((acc, v, j) => acc + v * x[j], mm.intercept[k]));
  const top = Math.max(...z);
  const lse = top + Math.log(z.reduce((acc, v) => acc + Math.exp(v - top), 0));
  return Array.from(logits, (v, k) => v / temperature
                    + mm.weight * (z[k] - lse - mm.log_prior[k]));
}

// -- the served probabilities: dermalab.core.decision.Decision.probabilities ----------------
// softmax(z / T (+ w r(m)) - tau log pi): ``bundle.shift`` is -tau log pi (the declared prior);
// ``row`` (the person's metadata) is weighed only when the model has a metadata model and the
// row gives any of its fields.
export function servedProbabilities(bundle, logits, row = null) {
  const used = bundle.metadata && row ? metadataGiven(bundle.metadata, row) : [];
  const scaled = used.length ? fuseMetadata(logits, bundle.temperature, bundle.metadata, row)
    : Array.from(logits, (v) => v / bundle.temperature);
  const shift = bundle.shift || [];
  return {probs: softmax(scaled.map((v, k) => v + (shift[k] || 0)), 1.0), used};
}

// -- "not skin": Mahalanobis distance to the closest class mean (Lee et al., NeurIPS 2018) ----
// ``(f - m)^T P (f - m) = f^T P f - 2 f^T P m + m^T P m``; ``P m`` and ``m^T P m`` are
// computed once per model.
export function prepareMahalanobis(means, precision, k, d) {
  const pm = new Float64Array(k * d);
  const quadM = new Float64Array(k);
  for (let c = 0; c < k; c++) {
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += means[c * d + i] * precision[i * d + j];
      pm[c * d + j] = s;
    }
    let q = 0;
    for (let j = 0; j < d; j++) q += pm[c * d + j] * means[c * d + j];
    quadM[c] = q;
  }
  return {precision, pm, quadM, k, d};
}

export function mahalanobisScore(features, prepared) {
  const {precision, pm, quadM, k, d} = prepared;
  let quadF = 0;
  for (let j = 0; j < d; j++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += features[i] * precision[i * d + j];
    quadF += s * features[j];
  }
  let best = Infinity;
  for (let c = 0; c < k; c++) {
    let cross = 0;
    for (let j = 0; j < d; j++) cross += features[j] * pm[c * d + j];
    best = Math.min(best, quadF - 2 * cross + quadM[c]);
  }
  return best;
}

// dermalab.deploy.ood.colour_statistics for one RGB image (23 numbers): mean, std and the
// 10/50/90% quantiles of R, G, B; mean and std of the chromaticities r, g; mean and std of
// HSV saturation and value.
export function colourStatistics(rgb) {
  const n = rgb.length / 3;
  const mean = [0, 0, 0];
  const hist = [new Float64Array(256), new Float64Array(256), new Float64Array(256)];
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) { mean[c] += rgb[i * 3 + c] / 255; hist[c][rgb[i * 3 + c]]++; }
  }
  for (let c = 0; c < 3; c++) mean[c] /= n;
  const sd = [0, 0, 0];
  const chroma = [0, 0];
  let sMean = 0; let vMean = 0;
  const r = new Float64Array(n); const g = new Float64Array(n);
  const sat = new Float64Array(n); const val = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const x = [rgb[i * 3] / 255, rgb[i * 3 + 1] / 255, rgb[i * 3 + 2] / 255];
    for (let c = 0; c < 3; c++) sd[c] += (x[c] - mean[c]) ** 2;
    const total = x[0] + x[1] + x[2] + 1e-6;
    r[i] = x[0] / total; g[i] = x[1] / total;
    const v = Math.max(x[0], x[1], x[2]);
    sat[i] = (v - Math.min(x[0], x[1], x[2])) / (v + 1e-6);
    val[i] = v;
    chroma[0] += r[i]; chroma[1] += g[i]; sMean += sat[i]; vMean += v;
  }
  const meanOf = (a) => a.reduce((s, v) => s + v, 0) / n;
  const sdOf = (a, m) => Math.sqrt(a.reduce((s, v) => s + (v - m) ** 2, 0) / n);
  // numpy's default (linear) quantile, read off the channel's histogram of uint8 values.
  const quantile = (h, q) => {
    const pos = q * (n - 1);
    const lo = Math.floor(pos);
    const at = (idx) => { let seen = 0;
      for (let v = 0; v < 256; v++) { seen += h[v]; if (seen > idx) return v / 255; }
      return 1; };
    const a = at(lo); const b = at(Math.min(lo + 1, n - 1)); const t = pos - lo;
    return a + (b - a) * t;
  };
  const out = [...mean, ...sd.map((s) => Math.sqrt(s / n))];
  for (const q of [0.1, 0.5, 0.9]) for (let c = 0; c < 3; c++) out.push(quantile(hist[c], q));
  const rm = meanOf(r); const gm = meanOf(g);
  sMean /= n; vMean /= n;
  out.push(rm, gm, sdOf(r, rm), sdOf(g, gm), sMean, sdOf(sat, sMean), vMean, sdOf(val, vMean));
  return out;
}

// Mahalanobis for a small detector given as nested lists (the colour statistics).
export function smallMahalanobis(x, means, precision) {
  let best = Infinity;
  for (const m of means) {
    const dlt = x.map((v, i) => v - m[i]);
    let s = 0;
    for (let i = 0; i < dlt.length; i++) {
      let row = 0;
      for (let j = 0; j < dlt.length; j++) row += precision[i][j] * dlt[j];
      s += dlt[i] * row;
    }
    best = Math.min(best, s);
  }
  return best;
}

// -- the decision: the rules of AnalysisService.analyze for one model ------------------------
// ``not_skin`` (a detector fired), else ``ok`` when the top calibrated probability reaches
// the "not sure" threshold, else ``uncertain``; the referral is urgent when the malignant
// classes' summed probability reaches its operating point, routine when uncertain, else the
// top condition's own urgency.
export function referralReason(verdict, malP, malT, secondUrgent = false) {
  if (verdict === "not_skin") return "not_skin";
  if (malP !== null && malT !== null && malP >= malT) return "malignant";
  if (secondUrgent) return "second_opinion";
  return verdict === "uncertain" ? "uncertain" : "condition";
}

// ``routedNotSkin``: null without a router; else whether the router found the photo is not of
// skin, which then decides alone unless ``modelDetectors`` (ServeSettings.model_detectors).
// ``secondUrgent``: the model of the other kind of photo, asked as well, refers urgently.
export function decide(bundle, probs, oodScore, colourScore, urgencyOf, routedNotSkin = null,
                       modelDetectors = false, secondUrgent = false) {
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, bundle.top_k).map(([, i]) => i);
  const detectors = oodScore > bundle.ood.threshold || colourScore > bundle.colour.threshold;
  const notSkin = routedNotSkin === null ? detectors
    : routedNotSkin || (detectors && modelDetectors);
  const mal = bundle.malignant;
  const malP = mal ? mal.classes.reduce((s, c) => s + probs[bundle.classes.indexOf(c)], 0)
    : null;
  const malT = mal && mal.threshold !== null && mal.threshold !== undefined
    ? mal.threshold : null;
  let verdict = "not_skin"; let referral = null; let conditions = [];
  if (!notSkin) {
    conditions = order.map((i) => ({class_name: bundle.classes[i], probability: probs[i]}));
    verdict = probs[order[0]] >= bundle.uncertain_threshold ? "ok" : "uncertain";
    const reason = referralReason(verdict, malP, malT, secondUrgent);
    referral = reason === "malignant" || reason === "second_opinion" ? "urgent"
      : reason === "uncertain" ? "routine" : urgencyOf(conditions[0].class_name);
  }
  return {verdict, referral, conditions, top_index: order[0],
          malignant_probability: malP, malignant_threshold: malT,
          ood_score: oodScore, ood_threshold: bundle.ood.threshold,
          ood_colour_score: colourScore, ood_colour_threshold: bundle.colour.threshold,
          uncertain_threshold: bundle.uncertain_threshold};
}

// -- the image-type router: dermalab.deploy.router --------------------------------------------
// ``router_input``: the whole frame squashed to ``size`` x ``size`` (Pillow BILINEAR).
export function routerInput(src, w, h, size) {
  return pillowResize(src, w, h, size, size, "bilinear", null);
}

// ``predict_proba``: softmax of ((f - shift) / scale) @ coef.T + intercept, where f is the
// embedding followed by the colour statistics; ``coef`` is (types x features), row-major.
export function routeProbabilities(embedding, colour, shift, scale, coef, intercept) {
  const f = [...embedding, ...colour];
  const d = f.length;
  const z = [];
  for (let k = 0; k < intercept.length; k++) {
    let s = intercept[k];
    for (let i = 0; i < d; i++) s += ((f[i] - shift[i]) / scale[i]) * coef[k * d + i];
    z.push(s);
  }
  return softmax(z);
}

// ``AnalysisService.choose``: the person's word (a served type), else the router's most
// probable type among the served ones. Returns [type, chosen_by].
export function chooseType(served, probabilities, userType) {
  if (userType && userType !== "auto" && served.includes(userType)) return [userType, "user"];
  const best = served.reduce((a, b) => ((probabilities[b] || 0) > (probabilities[a] || 0)
    ? b : a));
  return [best, "router"];
}

// ``unserved_type`` (serve/service.py): the router's most probable type when it is a kind of
// skin photo no served model was trained on and the person did not choose; else null.
export function unservedType(served, probabilities, chosenBy) {
  if (chosenBy === "user" || !probabilities) return null;
  const keys = Object.keys(probabilities);
  if (!keys.length) return null;
  const top = keys.reduce((a, b) => (probabilities[b] > probabilities[a] ? b : a));
  return top !== "not_skin" && !served.includes(top) ? top : null;
}

// ``second_opinion_type`` (serve/answer.py): the other served skin type to ask as well when
// the router (not the person) chose a skin model with a probability below ``line``; else null.
export function secondOpinionType(served, routing, line) {
  const probs = routing.probabilities || {};
  const kind = routing.image_type;
  if (line === null || line === undefined || routing.chosen_by !== "router"
      || kind === "not_skin" || routing.unserved || (probs[kind] || 0) >= line) return null;
  const others = served.filter((k) => k !== kind);
  if (!others.length) return null;
  return others.reduce((a, b) => ((probs[b] || 0) > (probs[a] || 0) ? b : a));
}

// -- wording: AnalysisService.localize ------------------------------------------------------
// Python's f"{p:.0%}" (ties to even).
export function percent(p) {
  return `${pyRound(p * 100)}%`;
}

export function fill(template, params = {}) {
  return template.replace(/\{(\w+)\}/g, (_, k) => (k in params ? String(params[k]) : ""));
}

export function localize(facts, bundle, lang) {
  const T = bundle.texts[lang] || bundle.texts.en;
  const msg = (key, params) => fill(T.messages[key] || bundle.texts.en.messages[key] || key,
                                    params);
  // The bundle's condition texts are already worded as the server words them (fallbacks
  // included: serve/conditions.py), so they are used as they are.
  const conditions = facts.conditions.map((c) => (
    {class_name: c.class_name, probability: c.probability, ...T.conditions[c.class_name]}));
  const routing = facts.routing || {};
  const second = routing.second_opinion || null;
  const reason = referralReason(facts.verdict, facts.malignant_probability,
                                facts.malignant_threshold, !!(second && second.urgent));
  // A possibly malignant answer says so in its headline too (AnalysisService's wording).
  const flag = reason === "malignant" ? "_malignant" : "";
  const malignant = percent(facts.malignant_probability || 0);
  const other = second ? {model: msg(`model.${second.image_type}`),
                          type: msg(`image_type.${second.image_type}`),
                          probability: percent(second.malignant_probability || 0)} : null;
  let verdictText;
  if (facts.verdict === "not_skin") verdictText = msg("verdict.not_skin");
  else if (reason === "second_opinion") {
    verdictText = facts.verdict === "ok"
      ? msg("verdict.ok_second", {name: conditions[0].name, ...other,
                                  top: percent(conditions[0].probability)})
      : msg("verdict.uncertain_second", other);
  }
  else if (facts.verdict === "ok") {
    verdictText = msg(`verdict.ok${flag}`, {name: conditions[0].name, malignant,
                                            probability: percent(conditions[0].probability)});
  } else verdictText = msg(`verdict.uncertain${flag}`, {malignant});
  const referralText = reason === "condition" ? msg(`referral.${facts.referral}`)
    : reason === "second_opinion" ? msg("referral.second_opinion", other)
      : msg(`referral.${reason}`, {probability: percent(facts.malignant_probability || 0)});
  const model = msg(`model.${bundle.image_type}`);
  const routingText = (routing.unserved
    ? msg("routing.unserved", {type: msg(`image_type.${routing.unserved}`), model,
                               probability: percent((routing.probabilities || {})[
                                 routing.unserved] || 0)})
    : msg("routing.ondevice", {model}))
    + (second ? " " + msg("routing.second", {model: other.model}) : "");
  return {...facts, conditions, verdict_text: verdictText, referral_text: referralText,
          disclaimer: msg("disclaimer"), language: lang,
          routing: {...routing, text: routingText}};
}

// -- the heat-map: closed-form Grad-CAM at the final feature map ----------------------------
// For a global-average-pool + linear head, Grad-CAM's channel weights are the class's row of
// the classifier (Selvaraju et al., ICCV 2017; the gradient of the logit through the mean is
// W_k / HW, a constant that the min-max scaling removes): cam = relu(sum_c W_kc A_c), min-max
// scaled, resized bilinearly (half-pixel centres) to ``size``.
export function camFromFeatureMap(fmap, c, h, w, weightRow, size) {
  const cam = new Float32Array(h * w);
  for (let ch = 0; ch < c; ch++) {
    const wk = weightRow[ch];
    if (wk === 0) continue;
    const base = ch * h * w;
    for (let i = 0; i < h * w; i++) cam[i] += wk * fmap[base + i];
  }
  let lo = Infinity; let hi = -Infinity;
  for (let i = 0; i < h * w; i++) {
    cam[i] = Math.max(cam[i], 0);
    lo = Math.min(lo, cam[i]); hi = Math.max(hi, cam[i]);
  }
  for (let i = 0; i < h * w; i++) cam[i] = (cam[i] - lo) / (hi - lo + 1e-7);
  const out = new Float32Array(size * size);
  const sy = h / size; const sx = w / size;
  for (let y = 0; y < size; y++) {
    const fy = Math.max((y + 0.5) * sy - 0.5, 0);
    const y0 = Math.min(Math.floor(fy), h - 1); const y1 = Math.min(y0 + 1, h - 1);
    const ty = fy - y0;
    for (let x = 0; x < size; x++) {
      const fx = Math.max((x + 0.5) * sx - 0.5, 0);
      const x0 = Math.min(Math.floor(fx), w - 1); const x1 = Math.min(x0 + 1, w - 1);
      const tx = fx - x0;
      const top = cam[y0 * w + x0] * (1 - tx) + cam[y0 * w + x1] * tx;
      const bottom = cam[y1 * w + x0] * (1 - tx) + cam[y1 * w + x1] * tx;
      out[y * size + x] = top * (1 - ty) + bottom * ty;
    }
  }
  return out;
}

// The jet colour map (as OpenCV's COLORMAP_JET, piecewise linear) for v in [0, 1].
export function jet(v) {
  const ch = (o) => Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - o)));
  return [ch(3), ch(2), ch(1)];
}

// pytorch-grad-cam's show_cam_on_image(image, cam, use_rgb=True, image_weight=0.55): the blend
// is scaled so its brightest value is 1. Returns RGBA for a canvas.
export function overlay(rgb, cam, size, imageWeight = 0.55) {
  const blend = new Float32Array(size * size * 3);
  let top = 0;
  for (let i = 0; i < size * size; i++) {
    const heat = jet(Math.round(cam[i] * 255) / 255);
    for (let c = 0; c < 3; c++) {
      const v = (1 - imageWeight) * heat[c] + imageWeight * rgb[i * 3 + c] / 255;
      blend[i * 3 + c] = v;
      top = Math.max(top, v);
    }
  }
  const out = new Uint8ClampedArray(size * size * 4);
  for (let i = 0; i < size * size; i++) {
    for (let c = 0; c < 3; c++) out[i * 4 + c] = Math.floor(255 * blend[i * 3 + c] / top);
    out[i * 4 + 3] = 255;
  }
  return out;
}
