// The page's on-device functions against the Python they mirror: tests/serve/test_ondevice_js.py
// writes the Python outputs on fixed inputs to $DERMALAB_JS_CASES and runs this file.
import assert from "node:assert/strict";
import {readFileSync} from "node:fs";
import {test} from "node:test";

import {
  camFromFeatureMap, chooseType, colourStatistics, decide, fill, fuseMetadata, localize,
  secondOpinionType,
  unservedType,
  mahalanobisScore, metadataGiven, normalize, percent, prepareMahalanobis, resizeForModel,
  routeProbabilities, routerInput, servedProbabilities, softmax,
} from "../../src/dermalab/serve/static/ondevice/core.js";

const C = JSON.parse(readFileSync(process.env.DERMALAB_JS_CASES, "utf8"));

function close(got, want, tol, what) {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  assert.ok(worst <= tol, `${what}: max |diff| ${worst} > ${tol}`);
}

test("resizing matches Pillow's bicubic resize, byte for byte", () => {
  for (const c of C.resize) {
    const got = resizeForModel(Uint8Array.from(c.input), c.w, c.h, c.size, c.mode);
    const what = `${c.w}x${c.h} -> ${c.size} ${c.mode}`;
    const big = c.w / c.size >= 6 || c.h / c.size >= 6;  // Pillow reduces first
    // The block reduction before a large shrink may round one level differently.
    close(got, c.expected, big ? 1 : 0, what);
  }
});

test("metadata fusion matches MetadataModel.fuse and .given", () => {
  const m = C.metadata;
  m.rows.forEach((row, i) => {
    close(softmax(fuseMetadata(m.logits[i], m.temperature, m.model, row), 1.0),
          m.expected[i], 1e-9, `fused row ${i}`);
    assert.deepEqual(metadataGiven(m.model, row), m.given[i], `given row ${i}`);
  });
});

test("served probabilities match Decision.probabilities (prior shift, metadata)", () => {
  const c = C.served;
  c.rows.forEach((row, i) => close(servedProbabilities(c.bundle, c.logits[i], row).probs,
                                   c.expected[i], 1e-9, `served row ${i}`));
  c.logits.forEach((z, i) => close(servedProbabilities(c.bundle, z).probs, c.plain[i], 1e-9,
                                   `served photo alone ${i}`));
  // a bundle from before the prior shift (no "shift") serves softmax(z / T)
  close(servedProbabilities({temperature: 1.3}, c.logits[0]).probs,
        softmax(c.logits[0], 1.3), 1e-12, "no shift");
});

test("normalisation matches normalize_batch", () => {
  const n = C.normalize;
  close(normalize(Uint8Array.from(n.input), n.size, n.mean, n.std), n.expected, 1e-6,
        "normalize");
});

test("temperature softmax matches calibrated_probs", () => {
  C.softmax.logits.forEach((row, i) => close(softmax(row, C.softmax.temperature),
                                             C.softmax.expected[i], 1e-12, "softmax"));
});

test("Mahalanobis score matches MahalanobisOOD.score", () => {
  const m = C.mahalanobis;
  const prep = prepareMahalanobis(Float32Array.from(m.means), Float32Array.from(m.precision),
                                  m.k, m.d);
  const got = m.features.map((f) => mahalanobisScore(Float32Array.from(f), prep));
  got.forEach((g, i) => assert.ok(Math.abs(g - m.expected[i]) <= 1e-9 * Math.abs(m.expected[i]),
                                  `score ${i}: ${g} vs ${m.expected[i]}`));
});

test("colour statistics match colour_statistics", () => {
  for (const c of C.colour) close(colourStatistics(Uint8Array.from(c.input)), c.expected, 1e-9,
                                  "colour");
});

test("closed-form Grad-CAM matches cam_from_feature_map", () => {
  const m = C.cam;
  m.weight.forEach((row, k) => close(
    camFromFeatureMap(Float32Array.from(m.fmap), m.c, m.h, m.w, Float32Array.from(row), m.size),
    m.expected[k], 1e-5, `cam ${k}`));
});

test("percentages are written as Python writes them", () => {
  for (const [p, want] of C.percent) assert.equal(percent(p), want, `percent(${p})`);
});

test("verdict, referral and wording follow the server's rules", () => {
  let kinds = new Set();
  for (const c of C.decide) {
    const facts = decide(c.bundle, c.probs, c.ood, c.colour, (k) => c.urgency[k], null, false,
                         !!(c.second && c.second.urgent));
    if (c.second) facts.routing = {second_opinion: c.second};
    assert.equal(facts.verdict, c.verdict);
    assert.equal(facts.referral, c.referral);
    assert.deepEqual(facts.conditions.map((x) => c.bundle.classes.indexOf(x.class_name)),
                     c.order);
    kinds.add(facts.verdict + "/" + facts.referral);
    for (const [lang, [verdictText, referralText]] of Object.entries(c.texts)) {
      const conds = Object.fromEntries(c.bundle.classes.map((k) => [k, {name: `name-${k}`}]));
      const texts = {};
      for (const l of Object.keys(C.messages)) texts[l] = {messages: C.messages[l], conditions: conds};
      const r = localize(facts, {texts, image_type: "dermoscopic"}, lang);
      assert.equal(r.verdict_text, verdictText, `${lang} verdict`);
      assert.equal(r.referral_text, referralText, `${lang} referral`);
      assert.ok(r.routing.text.length > 10);
    }
  }
  // The fixed cases reach every verdict and several referrals.
  for (const v of ["ok", "uncertain", "not_skin"]) {
    assert.ok([...kinds].some((k) => k.startsWith(v + "/")), `no ${v} case in ${[...kinds]}`);
  }
  assert.ok([...kinds].some((k) => k.endsWith("/urgent")));
});

test("fill leaves no placeholder behind", () => {
  assert.equal(fill("{a} and {b}", {a: 1}), "1 and ");
});

test("the router's input matches router_input (Pillow BILINEAR), byte for byte", () => {
  for (const c of C.router.resize) {
    close(routerInput(Uint8Array.from(c.input), c.w, c.h, c.size), c.expected, 0,
          `router ${c.w}x${c.h} -> ${c.size}`);
  }
});

test("the router's probabilities match predict_proba", () => {
  const r = C.router.route;
  r.embedding.forEach((e, i) => close(
    routeProbabilities(e, r.colour[i], r.shift, r.scale, r.coef, r.intercept),
    r.expected[i], 1e-12, `route ${i}`));
});

test("the served type and the not-skin rule match routed_type and is_not_skin", () => {
  for (const c of C.router.choose) {
    assert.deepEqual(chooseType(c.served, c.probabilities, null), [c.expected, "router"]);
    assert.equal(unservedType(c.served, c.probabilities, "router"), c.unserved);
    assert.equal(unservedType(c.served, c.probabilities, "user"), null);
    assert.deepEqual(chooseType(c.served, c.probabilities, c.served.at(-1)),
                     [c.served.at(-1), "user"]);
  }
  for (const c of C.router.second) {
    assert.equal(secondOpinionType(c.served, c.routing, c.line), c.expected, JSON.stringify(c));
  }
  const bundle = {classes: ["a", "b"], top_k: 2, uncertain_threshold: 0.5,
                  ood: {threshold: 10}, colour: {threshold: 10}, malignant: null};
  for (const c of C.router.rules) {
    const score = c.detectors ? 11 : 9;
    const facts = decide(bundle, [0.7, 0.3], score, 0, () => "routine", c.routed,
                         c.model_detectors);
    assert.equal(facts.verdict === "not_skin", c.expected, JSON.stringify(c));
  }
});
