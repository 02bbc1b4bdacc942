// The slices of a triaged study on the model grid: one PNG sheet per display window from
// GET /v1/studies/{uid}/slices, cut into tiles; a scroller with the attention per slice as a strip
// beside it, the key slice opened first, and an optional attention overlay.

import { getBlob, getJSON } from "./api.js";

const STRIP_INSET = 8; // CSS px: half of Chromium's range thumb, so bars sit under the thumb's centre
const OVERLAY_RGB = [255, 96, 32];
const OVERLAY_MAX_ALPHA = 110; // at the key slice: under half opaque, the anatomy shows

export class SliceViewer {
  constructor(root, { onSlice }) {
    this.canvas = root.querySelector("#slice-canvas");
    this.strip = root.querySelector("#attention-strip");
    this.range = root.querySelector("#slice-range");
    this.label = root.querySelector("#slice-label");
    this.missing = root.querySelector("#slice-missing");
    this.windowGroup = root.querySelector("#windows");
    this.overlayToggle = root.querySelector("#overlay-toggle");
    this.overlayNote = root.querySelector("#overlay-note");
    this.stage = root.querySelector("#slice-stage");
    this.onSlice = onSlice;
    this.generation = 0;
    this.index = 0;
    this.depth = 0;

    this.range.addEventListener("input", () => this.show(Number(this.range.value)));
    this.overlayToggle.addEventListener("change", () => this.setOverlay(this.overlayToggle.checked));
    root.querySelector("#key-slice").addEventListener("click", () => this.show(this.keySlice));
    this.strip.addEventListener("click", (event) => this.show(this.sliceAt(event.offsetX)));
    this.stage.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        this.show(this.index + (event.deltaY > 0 ? -1 : 1));
      },
      { passive: false },
    );
    new ResizeObserver(() => this.drawStrip()).observe(this.strip);
  }

  /** Show a result's slices: the key slice first, in the first window of the model card. */
  async open(result) {
    const generation = ++this.generation;
    this.result = result;
    this.depth = result.slices.count;
    this.attention = result.slices.attention;
    this.maxAttention = Math.max(...this.attention, 1e-9);
    this.keySlice = result.slices.key_slice;
    this.sheets = new Map();
    this.mask = null;
    this.layout = null;
    this.window = null;
    this.range.max = String(this.depth - 1);
    this.windowGroup.replaceChildren();
    this.missing.hidden = true;
    this.show(this.keySlice);

    let layout;
    try {
      layout = await getJSON(`/v1/studies/${encodeURIComponent(result.study_uid)}/slices`);
    } catch (problem) {
      if (generation !== this.generation) return;
      this.missing.textContent = `No slice images: ${problem.message}`;
      this.missing.hidden = false;
      this.draw();
      return;
    }
    if (generation !== this.generation) return;
    this.layout = layout;
    for (const [i, window] of layout.windows.entries()) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.window = window.name;
      button.title = `${window.name}: center ${window.center} HU, width ${window.width} HU (key ${i + 1})`;
      button.textContent = window.name;
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => this.setWindow(window.name));
      this.windowGroup.append(button);
    }
    const first = layout.windows[0].name;
    // the first window is shown as soon as it arrives; the others load meanwhile
    const loads = layout.windows.map((w) => this.loadSheet(w, generation));
    await loads[0];
    if (generation !== this.generation) return;
    this.setWindow(first);
    performance.mark("headct:slices-shown");
    await Promise.allSettled(loads);
    if (generation === this.generation) performance.mark("headct:slices-loaded");
  }

  async loadSheet(window, generation) {
    const bitmap = await createImageBitmap(await getBlob(window.url));
    if (generation !== this.generation) return;
    this.sheets.set(window.name, bitmap);
    if (window.name === this.window) this.draw();
  }

  setWindow(name) {
    if (!this.layout || !this.layout.windows.some((w) => w.name === name)) return;
    this.window = name;
    for (const button of this.windowGroup.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.window === name));
    }
    this.canvas.dataset.window = name;
    this.draw();
  }

  setOverlay(on) {
    this.overlayToggle.checked = on;
    this.overlayNote.hidden = !on;
    this.canvas.dataset.overlay = String(on);
    this.draw();
  }

  show(index) {
    if (!this.depth) return;
    this.index = Math.max(0, Math.min(this.depth - 1, Math.round(index)));
    this.range.value = String(this.index);
    const shown = this.result.slices.key_finding;
    const key = this.index === this.keySlice ? ` · key slice${shown ? ` (${shown})` : ""}` : "";
    const text = `Slice ${this.index + 1} of ${this.depth}${key} · attention ${this.attention[this.index].toFixed(3)}`;
    this.label.textContent = text;
    this.range.setAttribute("aria-valuetext", text);
    this.canvas.dataset.slice = String(this.index);
    this.draw();
    this.drawStrip();
    this.onSlice(this.index);
  }

  /** Keyboard navigation; true when the key was one of ours. */
  handleKey(event) {
    if (!this.depth) return false;
    const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5 };
    if (event.key in steps) this.show(this.index + steps[event.key]);
    else if (event.key === "Home") this.show(0);
    else if (event.key === "End") this.show(this.depth - 1);
    else if (event.key === "k" || event.key === "K") this.show(this.keySlice);
    else if (event.key === "o" || event.key === "O") this.setOverlay(!this.overlayToggle.checked);
    else if (this.layout && /^[1-9]$/.test(event.key) && this.layout.windows[Number(event.key) - 1]) {
      this.setWindow(this.layout.windows[Number(event.key) - 1].name);
    } else return false;
    return true;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const sheet = this.window && this.sheets.get(this.window);
    if (!sheet || !this.layout) {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      return;
    }
    const { width, height, columns } = this.layout;
    if (this.canvas.width !== width * 4) {
      this.canvas.width = width * 4;
      this.canvas.height = height * 4;
    }
    const sx = (this.index % columns) * width;
    const sy = Math.floor(this.index / columns) * height;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(sheet, sx, sy, width, height, 0, 0, this.canvas.width, this.canvas.height);
    if (this.overlayToggle.checked) {
      const overlay = this.overlayTile();
      if (overlay) ctx.drawImage(overlay, 0, 0, this.canvas.width, this.canvas.height);
    }
  }

  /** The head (HU above 0, from the brain window's sheet) tinted by this slice's attention. */
  overlayTile() {
    const brain = this.sheets.get("brain") || this.sheets.get(this.layout.windows[0].name);
    if (!brain) return null;
    const { width, height, columns } = this.layout;
    if (!this.mask) {
      const scratch = new OffscreenCanvas(brain.width, brain.height);
      const sctx = scratch.getContext("2d");
      sctx.drawImage(brain, 0, 0);
      this.mask = sctx.getImageData(0, 0, brain.width, brain.height);
    }
    const alpha = Math.round((OVERLAY_MAX_ALPHA * this.attention[this.index]) / this.maxAttention);
    const tile = new ImageData(width, height);
    const x0 = (this.index % columns) * width;
    const y0 = Math.floor(this.index / columns) * height;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const grey = this.mask.data[((y0 + y) * this.mask.width + x0 + x) * 4];
        const o = (y * width + x) * 4;
        tile.data[o] = OVERLAY_RGB[0];
        tile.data[o + 1] = OVERLAY_RGB[1];
        tile.data[o + 2] = OVERLAY_RGB[2];
        tile.data[o + 3] = grey > 0 ? alpha : 0;
      }
    }
    const canvas = new OffscreenCanvas(width, height);
    canvas.getContext("2d").putImageData(tile, 0, 0);
    return canvas;
  }

  sliceAt(offsetX) {
    const usable = this.strip.clientWidth - 2 * STRIP_INSET;
    return Math.round(((offsetX - STRIP_INSET) / usable) * (this.depth - 1));
  }

  drawStrip() {
    const scale = window.devicePixelRatio || 1;
    const cssWidth = this.strip.clientWidth;
    const cssHeight = this.strip.clientHeight;
    if (!cssWidth || !this.depth) return;
    this.strip.width = Math.round(cssWidth * scale);
    this.strip.height = Math.round(cssHeight * scale);
    const ctx = this.strip.getContext("2d");
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const step = this.depth > 1 ? (cssWidth - 2 * STRIP_INSET) / (this.depth - 1) : 0;
    const barWidth = Math.max(2, Math.min(step * 0.8, 14));
    for (let i = 0; i < this.depth; i++) {
      const x = STRIP_INSET + i * step;
      const h = Math.max(2, ((cssHeight - 6) * this.attention[i]) / this.maxAttention);
      ctx.fillStyle = i === this.keySlice ? "#ff8f5a" : "#5a7ca8";
      ctx.fillRect(x - barWidth / 2, cssHeight - h, barWidth, h);
      if (i === this.index) {
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = 1.5;
        ctx.strokeRect(x - barWidth / 2 - 1.5, 1, barWidth + 3, cssHeight - 2);
      }
    }
  }
}
