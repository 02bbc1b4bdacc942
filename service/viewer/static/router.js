// The router's expert weights as a small SVG chart: the study's mean weights as bars, and the
// weights of every grid slice as stacked columns (slice 0, inferior, on the left), the slice on
// screen outlined.

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#5aa9ff", "#f29e1f", "#8bd17c", "#d67ad6", "#f25f5c", "#70d6d6", "#c2b280", "#9b8cf2"];
const WIDTH = 520;
const HEIGHT = 120;
const BARS = 150; // width of the study-weights panel
const GAP = 24;

function node(tag, attributes, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function colourOf(expert) {
  return COLOURS[expert % COLOURS.length];
}

export class RouterChart {
  constructor(container) {
    this.container = container;
    this.marker = null;
  }

  render(router, keySlice) {
    const k = router.experts;
    const svg = node("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label":
        `Router weights of ${k} experts. Study: ` +
        router.study_weights.map((w, i) => `expert ${i + 1} ${w.toFixed(2)}`).join(", "),
    });
    // study weights: one bar per expert
    const rowHeight = Math.min(24, (HEIGHT - 20) / k);
    svg.append(node("text", { x: 0, y: 10 }, "study"));
    router.study_weights.forEach((weight, i) => {
      const y = 16 + i * rowHeight;
      svg.append(node("text", { x: 0, y: y + rowHeight * 0.7 }, `E${i + 1}`));
      svg.append(
        node("rect", {
          x: 22,
          y,
          width: Math.max(1, (BARS - 60) * weight),
          height: rowHeight * 0.75,
          fill: colourOf(i),
          class: "study-weight",
          "data-expert": i,
        }),
      );
      svg.append(node("text", { x: 26 + (BARS - 60) * weight, y: y + rowHeight * 0.7 }, weight.toFixed(2)));
    });
    // per-slice weights: stacked columns
    const slices = router.slice_weights;
    const left = BARS + GAP;
    const plotWidth = WIDTH - left;
    const plotHeight = HEIGHT - 28;
    const column = plotWidth / slices.length;
    svg.append(node("text", { x: left, y: 10 }, "per slice (inferior → superior)"));
    slices.forEach((weights, s) => {
      let y = 16 + plotHeight;
      const total = weights.reduce((a, b) => a + b, 0) || 1;
      weights.forEach((weight, i) => {
        const h = (plotHeight * weight) / total;
        y -= h;
        svg.append(
          node("rect", {
            x: left + s * column,
            y,
            width: Math.max(0.5, column - 0.5),
            height: h,
            fill: colourOf(i),
            class: "slice-weight",
          }),
        );
      });
    });
    svg.append(
      node("text", { x: left + (keySlice + 0.5) * column, y: HEIGHT - 1, "text-anchor": "middle" }, "▲ key"),
    );
    this.marker = node("rect", {
      y: 15,
      width: column,
      height: plotHeight + 2,
      fill: "none",
      stroke: "#fff",
      "stroke-width": 1.5,
      id: "router-current",
    });
    this.left = left;
    this.column = column;
    svg.append(this.marker);
    this.container.replaceChildren(svg);
  }

  highlight(slice) {
    if (this.marker) this.marker.setAttribute("x", String(this.left + slice * this.column));
  }
}
