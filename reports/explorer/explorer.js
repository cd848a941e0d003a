// The β-VAE latent explorer: the exported encoder and decoder (encoder.onnx, decoder.onnx, written
// by `dvc repro export` and checked there against PyTorch) run in onnxruntime-web's WebAssembly
// build, vendored in vendor/ so the page needs no network. explorer.json orders the latent
// dimensions by KL and holds test digits. window.explorer is the page's API for its tests
// (tests/test_explorer.py) and for anyone scripting it from the console.

const SIDE = 28;          // MNIST images are 28 x 28
const GLYPH = 20;         // MNIST digits were scaled to fit 20 x 20, then centred by mass in 28 x 28
const RANGE = 3;          // sliders span ±3 prior standard deviations
const PEN = 20;           // stroke width on the 280 x 280 pad, about MNIST's stroke at 28 x 28

const $ = (id) => document.getElementById(id);
const status = (text, error = false) => { $("status").textContent = text; $("status").className = error ? "error" : ""; };

function unsupported() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    return "This browser cannot run the model: it has no WebAssembly. A current Chrome, Firefox, Safari or Edge can.";
  }
  if (location.protocol === "file:") {
    return "Browsers do not load a model from a file:// page. Serve this folder: `betavae explore` " +
           "(or `python -m http.server -d reports/explorer`), then open the address it prints.";
  }
  return null;
}

async function start() {
  const reason = unsupported();
  if (reason) throw new Error(reason);
  const ort = await import("./vendor/ort.wasm.bundle.min.mjs");
  // The glue is bundled into the module; only the binary is fetched.
  ort.env.wasm.wasmPaths = { wasm: new URL("./vendor/ort-wasm-simd-threaded.wasm", import.meta.url).href };
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const [info, encoder, decoder] = await Promise.all([
    fetch("explorer.json").then((response) => {
      if (!response.ok) throw new Error(`explorer.json: ${response.status} ${response.statusText}`);
      return response.json();
    }),
    ort.InferenceSession.create("encoder.onnx", { executionProviders: ["wasm"] }),
    ort.InferenceSession.create("decoder.onnx", { executionProviders: ["wasm"] }),
  ]);
  if (info.format !== "betavae-explorer/1") throw new Error(`explorer.json: format ${info.format}, expected betavae-explorer/1`);
  return new Explorer(ort, info, encoder, decoder);
}

class Explorer {
  constructor(ort, info, encoder, decoder) {
    Object.assign(this, { ort, info, encoder, decoder });
    this.code = new Float32Array(info.latent_dim);    // the latent code the decoder draws, by dimension index
    this.probabilities = new Float32Array(SIDE * SIDE);
    this.input = null;                                 // the 28 x 28 image last encoded, in [0, 1]
    this.decodeMs = [];
    this.digits = Uint8Array.from(atob(info.digits.pixels), (c) => c.charCodeAt(0));
    this.nextDigit = 0;
    this.queued = null;
    this.running = Promise.resolve();
    this.encoding = Promise.resolve();
    this.sliders = this.buildSliders();
    this.pad = new Pad($("pad"), () => this.encodeDrawing());
  }

  buildSliders() {
    const box = $("sliders");
    const sliders = new Map();
    for (const { index, kl } of this.info.dimensions) {
      const label = document.createElement("label");
      label.htmlFor = `dim-${index}`;
      label.innerHTML = `z<sub>${index}</sub> <span class="kl">${kl.toFixed(2)}</span>`;
      const slider = Object.assign(document.createElement("input"),
        { type: "range", id: `dim-${index}`, min: -RANGE, max: RANGE, step: "any", value: 0 });
      const shown = Object.assign(document.createElement("output"), { value: "0.00" });
      slider.addEventListener("input", () => {
        this.code[index] = Number(slider.value);
        shown.value = this.code[index].toFixed(2);
        this.redraw();
      });
      box.append(label, slider, shown);
      sliders.set(index, { slider, shown });
    }
    return sliders;
  }

  // The code shown on the sliders (a value beyond ±RANGE pins its slider to the end; the number is exact).
  showCode() {
    for (const [index, { slider, shown }] of this.sliders) {
      slider.value = this.code[index];
      shown.value = this.code[index].toFixed(2);
    }
  }

  // Decode the current code once the decode in progress (if any) is done; changes made meanwhile
  // fold into one decode, so dragging a slider never queues a backlog.
  redraw() {
    if (!this.queued) {
      this.queued = this.running.then(() => { this.queued = null; return this.decodeAndDraw(); });
      this.running = this.queued.catch((error) => status(`Decoding failed: ${error.message}`, true));
    }
    return this.queued;
  }

  async decodeAndDraw() {
    const started = performance.now();
    const latent = new this.ort.Tensor("float32", Float32Array.from(this.code), [1, this.code.length]);
    const { pixels } = await this.decoder.run({ latent });
    this.probabilities = Float32Array.from(pixels.data);
    paint($("digit"), this.probabilities);
    this.decodeMs.push(performance.now() - started);
    const recent = this.decodeMs.slice(-20).sort((a, b) => a - b);
    $("timing").textContent = `decode and draw: ${recent[recent.length >> 1].toFixed(1)} ms per frame (median of the last ${recent.length})`;
  }

  async setLatent(values) {
    if (values.length !== this.code.length) throw new Error(`a latent code has ${this.code.length} values, got ${values.length}`);
    this.code.set(values);
    this.showCode();
    await this.redraw();
  }

  encode(image) {
    this.encoding = this.encodeNow(image);
    return this.encoding;
  }

  async encodeNow(image) {
    const tensor = new this.ort.Tensor("float32", image, [1, 1, SIDE, SIDE]);
    const { mean } = await this.encoder.run({ image: tensor });
    this.input = image;
    paint($("seen"), image);
    await this.setLatent(mean.data);
  }

  async encodeDrawing() {
    const image = this.pad.image();
    if (image) {
      $("about").textContent = "The decoder's reconstruction of your drawing; move the sliders to change it.";
      await this.encode(image);
    }
  }

  async priorSample() {
    const draws = Array.from(this.code, () => gaussian());
    $("about").textContent = "A draw from the prior N(0, I), decoded.";
    await this.setLatent(draws);
  }

  async testDigit() {
    const { count, labels } = this.info.digits;
    const k = this.nextDigit;
    this.nextDigit = (k + 1) % count;
    const image = Float32Array.from(this.digits.subarray(k * SIDE * SIDE, (k + 1) * SIDE * SIDE), (v) => v / 255);
    this.pad.show(image);
    $("about").textContent = `Test image ${k} (a ${labels[k]}): its posterior mean, decoded. Draw over it to change it.`;
    await this.encode(image);
  }

  canvasPixels() {  // what the page drew, as 0-255 grey values at 28 x 28
    const data = $("digit").getContext("2d").getImageData(0, 0, SIDE, SIDE).data;
    return Array.from({ length: SIDE * SIDE }, (_, i) => data[4 * i]);
  }
}

// A 28 x 28 canvas gets one canvas pixel per image pixel; CSS scales it up (image-rendering:
// pixelated), so what is read back is exactly what was drawn.
function paint(canvas, values) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  values.forEach((value, i) => {
    const grey = Math.round(Math.min(1, Math.max(0, value)) * 255);
    image.data.set([grey, grey, grey, 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
}

function gaussian() {  // Box–Muller
  return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
}

// A drawing pad: white strokes on black, by mouse, pen or finger (pointer events). When a stroke
// ends, `image()` turns the drawing into a digit as MNIST made them: the strokes' bounding box
// scaled to fit GLYPH x GLYPH, then placed in SIDE x SIDE with its centre of mass in the middle.
class Pad {
  constructor(canvas, onStroke) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { willReadFrequently: true });
    this.clear();
    let last = null;
    const point = (event) => {
      const box = canvas.getBoundingClientRect();
      return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
    };
    canvas.addEventListener("pointerdown", (event) => { canvas.setPointerCapture(event.pointerId); last = point(event); this.line(last, last); });
    canvas.addEventListener("pointermove", (event) => { if (last) { const next = point(event); this.line(last, next); last = next; } });
    const end = () => { if (last) { last = null; onStroke(); } };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }

  clear() {
    this.context.fillStyle = "#000";
    this.context.fillRect(0, 0, this.canvas.width, this.canvas.height);
  }

  line(from, to) {
    Object.assign(this.context, { strokeStyle: "#fff", lineWidth: PEN, lineCap: "round", lineJoin: "round" });
    this.context.beginPath();
    this.context.moveTo(...from);
    this.context.lineTo(...to);
    this.context.stroke();
  }

  show(image) {  // a 28 x 28 image, scaled up to fill the pad, to draw over
    const small = Object.assign(document.createElement("canvas"), { width: SIDE, height: SIDE });
    paint(small, image);
    this.context.imageSmoothingEnabled = false;
    this.context.drawImage(small, 0, 0, this.canvas.width, this.canvas.height);
  }

  image() {  // Float32Array(784) in [0, 1], or null for an empty pad
    const { width, height } = this.canvas;
    const grey = this.context.getImageData(0, 0, width, height).data;
    let [left, top, right, bottom] = [width, height, -1, -1];
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (grey[4 * (y * width + x)] > 0) {
          left = Math.min(left, x); right = Math.max(right, x); top = Math.min(top, y); bottom = Math.max(bottom, y);
        }
      }
    }
    if (right < 0) return null;
    const scale = GLYPH / Math.max(right - left + 1, bottom - top + 1);
    const [w, h] = [Math.max(1, Math.round((right - left + 1) * scale)), Math.max(1, Math.round((bottom - top + 1) * scale))];
    const glyph = Object.assign(document.createElement("canvas"), { width: w, height: h }).getContext("2d", { willReadFrequently: true });
    glyph.imageSmoothingQuality = "high";
    glyph.drawImage(this.canvas, left, top, right - left + 1, bottom - top + 1, 0, 0, w, h);
    const pixels = glyph.getImageData(0, 0, w, h).data;
    let [mass, mx, my] = [0, 0, 0];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = pixels[4 * (y * w + x)] / 255;
        mass += v; mx += v * x; my += v * y;
      }
    }
    const [dx, dy] = [Math.round(SIDE / 2 - mx / mass - 0.5), Math.round(SIDE / 2 - my / mass - 0.5)];
    const image = new Float32Array(SIDE * SIDE);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const [X, Y] = [x + dx, y + dy];
        if (X >= 0 && X < SIDE && Y >= 0 && Y < SIDE) image[Y * SIDE + X] = pixels[4 * (y * w + x)] / 255;
      }
    }
    return image;
  }
}

window.explorer = {
  ready: start().then(async (explorer) => {
    Object.assign(window.explorer, {
      setLatent: (values) => explorer.setLatent(values),
      latent: () => Array.from(explorer.code),
      sliders: () => Array.from({ length: explorer.code.length }, (_, index) => Number($(`dim-${index}`).value)),
      probabilities: () => Array.from(explorer.probabilities),
      canvasPixels: () => explorer.canvasPixels(),
      input: () => (explorer.input ? Array.from(explorer.input) : null),
      decodeMs: () => explorer.decodeMs.slice(),
      order: () => explorer.info.dimensions.map(({ index }) => index),
      testDigit: () => explorer.testDigit(),
      priorSample: () => explorer.priorSample(),
      settled: async () => { await explorer.encoding; await explorer.running; },
    });
    $("prior").onclick = () => explorer.priorSample();
    $("test-digit").onclick = () => explorer.testDigit();
    $("zero").onclick = () => { $("about").textContent = "The prior's mean, z = 0, decoded."; return explorer.setLatent(new Float32Array(explorer.code.length)); };
    $("clear").onclick = () => explorer.pad.clear();
    for (const id of ["prior", "test-digit", "zero"]) $(id).disabled = false;
    const { model } = explorer.info;
    await explorer.testDigit();
    status(`Model from epoch ${model.epoch} (β = ${model.beta}${model.binarize === "dynamic" ? ", binarized MNIST" : ""}), ` +
           `${explorer.code.length} latent dimensions, running in your browser.`);
    return true;
  }).catch((error) => {
    status(error.message, true);
    window.explorer.error = error.message;
    return false;
  }),
};
