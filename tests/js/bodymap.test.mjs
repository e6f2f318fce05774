// The body map's regions (static/bodymap.js), run by tests/serve/test_page_js.py.
import assert from "node:assert/strict";
import {test} from "node:test";

import {SITE, regionName, regions} from "../../src/dermalab/serve/static/bodymap.js";

const names = {"page.body_right_arm": "Right arm", "page.body_upper_back": "Upper back",
               "page.body_scalp": "Back of the head", "page.body_behind": "(back)"};
const msg = (k) => names[k] || k;

test("every region has a body site, and each view has each part once", () => {
  const all = regions();
  for (const view of ["front", "back"]) {
    const parts = all.filter((r) => r[0] === view).map((r) => r[1]);
    assert.equal(new Set(parts).size, parts.length, view);
    for (const p of parts) assert.ok(p in SITE, p);
  }
  const back = all.filter((r) => r[0] === "back").map((r) => r[1]);
  for (const p of ["scalp", "upper_back", "lower_back"]) assert.ok(back.includes(p));
});

test("the back view is mirrored: the person's right arm is on the viewer's right", () => {
  const x = (view, part) => {
    const [, , , a] = regions().find((r) => r[0] === view && r[1] === part);
    return a.x ?? a.cx;
  };
  assert.ok(x("front", "right_arm") < x("front", "left_arm"));
  assert.ok(x("back", "right_arm") > x("back", "left_arm"));
});

test("names say when a limb is seen from behind", () => {
  assert.equal(regionName("front", "right_arm", msg), "Right arm");
  assert.equal(regionName("back", "right_arm", msg), "Right arm (back)");
  assert.equal(regionName("back", "upper_back", msg), "Upper back");
  assert.equal(regionName("back", "scalp", msg), "Back of the head");
});
