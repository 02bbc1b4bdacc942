// The triage banner and the 75 findings, grouped by category.

const CATEGORY_NAMES = {
  hemorrhage: "Hemorrhage",
  infarction_ischemia: "Infarction and ischemia",
  trauma: "Trauma",
  mass_lesions: "Mass lesions",
  structural: "Structural",
  chronic_changes: "Chronic changes",
  other: "Other",
};

function categoryName(category) {
  return CATEGORY_NAMES[category] || category.replaceAll("_", " ");
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

export function renderBanner(banner, result) {
  const names = new Map(result.findings.map((f) => [f.code, f.name]));
  const priority = result.triage.priority;
  banner.className = `banner ${priority}`;
  banner.querySelector("#priority").textContent = priority;
  const drivers = result.triage.findings.map((code) => names.get(code) || code);
  // basis study_score: no finding of the level is positive; the study-level score set it.
  banner.querySelector("#drivers").textContent = !drivers.length
    ? "No critical or urgent finding is positive."
    : result.triage.basis === "study_score"
      ? `Set by the study-level score (no ${priority} finding positive); most from ${drivers.join(", ")}`
      : `Driven by: ${drivers.join(", ")}`;
  banner.querySelector("#study-line").textContent =
    `Model ${result.model.name} version ${result.model.version} · study ${result.study_uid} · ` +
    `${result.slices.source_count} slices read, ${result.slices.count} on the model grid`;
  banner.querySelector("#disclaimer").textContent = result.disclaimer;
  const warnings = banner.querySelector("#warnings");
  warnings.replaceChildren(...result.warnings.map((w) => el("li", {}, w)));
  banner.dataset.priority = priority;
  banner.hidden = false;
}

function percent(value) {
  return `${(value * 100).toFixed(1)}%`;
}

function findingRow(finding) {
  const classes = ["finding", finding.positive ? "positive" : "negative"];
  if (finding.critical) classes.push("critical");
  const name = el("td", { class: "name" }, finding.name);
  if (finding.critical) name.append(el("span", { class: "tag", title: "A critical finding" }, "critical"));
  const meter = el(
    "div",
    {
      class: "meter",
      role: "img",
      "aria-label": `probability ${percent(finding.probability)}, threshold ${percent(finding.threshold)}`,
    },
    el("div", { class: "fill", style: `width:${percent(finding.probability)}` }),
    el("div", { class: "threshold", style: `left:calc(${percent(finding.threshold)} - 1px)` }),
  );
  return el(
    "tr",
    { class: classes.join(" "), "data-code": finding.code },
    el(
      "td",
      { class: "mark", title: finding.positive ? "positive" : "negative" },
      finding.positive ? "●" : "○",
      el("span", { class: "visually-hidden" }, finding.positive ? "positive" : "negative"),
    ),
    name,
    el("td", { class: "bar" }, meter),
    el(
      "td",
      { class: "num", title: "probability / operating threshold" },
      `${finding.probability.toFixed(3)} / ${finding.threshold.toFixed(2)}`,
    ),
  );
}

/**
 * Categories in the card's order, those with a positive critical finding first, then those with
 * any positive; within a category by probability, critical findings ahead when criticalFirst.
 */
export function orderFindings(findings, { criticalFirst }) {
  const groups = new Map();
  for (const finding of findings) {
    if (!groups.has(finding.category)) groups.set(finding.category, []);
    groups.get(finding.category).push(finding);
  }
  const rank = (items) => {
    if (criticalFirst && items.some((f) => f.positive && f.critical)) return 0;
    return items.some((f) => f.positive) ? 1 : 2;
  };
  const ordered = [...groups.entries()].map(([category, items], index) => ({ category, items, index }));
  ordered.sort((a, b) => rank(a.items) - rank(b.items) || a.index - b.index);
  for (const group of ordered) {
    group.items.sort(
      (a, b) =>
        (criticalFirst ? Number(b.critical) - Number(a.critical) : 0) || b.probability - a.probability,
    );
  }
  return ordered;
}

export function renderFindings(container, title, result, { positivesOnly, criticalFirst }) {
  const positives = result.findings.filter((f) => f.positive).length;
  title.textContent = `Findings: ${positives} positive of ${result.findings.length}`;
  const sections = [];
  for (const { category, items } of orderFindings(result.findings, { criticalFirst })) {
    const shown = positivesOnly ? items.filter((f) => f.positive) : items;
    if (!shown.length) continue;
    const count = items.filter((f) => f.positive).length;
    sections.push(
      el(
        "section",
        { class: "group", "data-category": category },
        el("h3", {}, `${categoryName(category)} · ${count} positive of ${items.length}`),
        el("table", {}, el("tbody", {}, ...shown.map(findingRow))),
      ),
    );
  }
  if (!sections.length) sections.push(el("p", { class: "subtle" }, "No finding is positive."));
  container.replaceChildren(...sections);
}
