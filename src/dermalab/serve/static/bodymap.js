// A body map to say where a spot is: front and back outlines whose regions are buttons (mouse,
// touch and keyboard: Tab to a region, Enter or Space to choose it). Choosing a region names
// the spot after it and, where the model weighs the body site, sets the site too.

const SVG = "http://www.w3.org/2000/svg";

// [part, shape, attributes] per view; x of the back view is shifted by BACK_X. The person's
// right is on the viewer's left in the front view, and on the viewer's right in the back view.
const FRONT = [
  ["head", "ellipse", {cx: 55, cy: 18, rx: 11, ry: 13}],
  ["neck", "rect", {x: 50, y: 31, width: 10, height: 7}],
  ["chest", "rect", {x: 38, y: 38, width: 34, height: 28, rx: 4}],
  ["abdomen", "rect", {x: 38, y: 66, width: 34, height: 26, rx: 4}],
  ["right_arm", "rect", {x: 26, y: 40, width: 10, height: 50, rx: 4}],
  ["left_arm", "rect", {x: 74, y: 40, width: 10, height: 50, rx: 4}],
  ["right_hand", "ellipse", {cx: 31, cy: 98, rx: 6, ry: 7}],
  ["left_hand", "ellipse", {cx: 79, cy: 98, rx: 6, ry: 7}],
  ["right_leg", "rect", {x: 39, y: 94, width: 15, height: 80, rx: 5}],
  ["left_leg", "rect", {x: 56, y: 94, width: 15, height: 80, rx: 5}],
  ["right_foot", "ellipse", {cx: 45, cy: 181, rx: 8, ry: 5}],
  ["left_foot", "ellipse", {cx: 65, cy: 181, rx: 8, ry: 5}],
];
const BACK_OF = {head: "scalp", chest: "upper_back", abdomen: "lower_back"};
const MIRROR = {right_arm: "left_arm", left_arm: "right_arm", right_hand: "left_hand",
                left_hand: "right_hand", right_leg: "left_leg", left_leg: "right_leg",
                right_foot: "left_foot", left_foot: "right_foot"};
const BACK_X = 110;

// The body site (the model's metadata vocabulary, HAM10000's) of each part.
export const SITE = {
  head: "face", scalp: "scalp", neck: "neck", chest: "chest", abdomen: "abdomen",
  upper_back: "back", lower_back: "back", right_arm: "upper extremity",
  left_arm: "upper extremity", right_hand: "hand", left_hand: "hand",
  right_leg: "lower extremity", left_leg: "lower extremity", right_foot: "foot",
  left_foot: "foot",
};

// The regions as [view, part, shape, attributes], the back view's parts renamed and mirrored.
export function regions() {
  const out = FRONT.map(([part, shape, a]) => ["front", part, shape, a]);
  for (const [part, shape, a] of FRONT) {
    const shifted = {...a};
    if ("x" in shifted) shifted.x += BACK_X;
    if ("cx" in shifted) shifted.cx += BACK_X;
    out.push(["back", BACK_OF[part] || MIRROR[part] || part, shape, shifted]);
  }
  return out;
}

// The spot's name for a region: the part's name, "(back)" added for a limb seen from behind.
export function regionName(view, part, msg) {
  const limb = part.includes("_") && !(part in BACK_OF) && !part.endsWith("_back");
  return msg("page.body_" + part) + (view === "back" && limb ? " " + msg("page.body_behind") : "");
}

// Draw the map into ``svg``; ``choose(view, part)`` is called when a region is chosen.
export function drawBodyMap(svg, msg, choose) {
  svg.replaceChildren();
  for (const [label, x] of [["page.body_front", 55], ["page.body_back", 55 + BACK_X]]) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", x); t.setAttribute("y", 198); t.setAttribute("text-anchor", "middle");
    t.setAttribute("class", "body-view"); t.textContent = msg(label);
    svg.append(t);
  }
  for (const [view, part, shape, attrs] of regions()) {
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "region");
    g.setAttribute("role", "button");
    g.setAttribute("tabindex", "0");
    g.setAttribute("aria-pressed", "false");
    g.setAttribute("aria-label", regionName(view, part, msg));
    g.dataset.view = view; g.dataset.part = part;
    const s = document.createElementNS(SVG, shape);
    for (const [k, v] of Object.entries(attrs)) s.setAttribute(k, v);
    const title = document.createElementNS(SVG, "title");
    title.textContent = regionName(view, part, msg);
    g.append(title, s);
    const pick = () => {
      svg.querySelectorAll(".region").forEach((r) => r.setAttribute("aria-pressed", "false"));
      g.setAttribute("aria-pressed", "true");
      choose(view, part);
    };
    g.addEventListener("click", pick);
    g.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); }
    });
    svg.append(g);
  }
}
