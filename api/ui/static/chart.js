// Items per second over time, drawn on a canvas: each item's finish (the events stream's
// `finished_at_ms`, replayed from the batch's start) counted in its second.
import { h, setText } from "./dom.js";

const MOST_BARS = 240; // wider spans are drawn in buckets of several seconds

export class Chart {
  constructor(title) {
    this.title = title;
    this.perSecond = new Map(); // unix second -> items that finished in it
    this.pending = false;
    this.canvas = h("canvas", { width: 560, height: 180, role: "img", "aria-label": title });
    this.now = h("span", {}, "none yet");
    this.el = h("figure", { class: "chart" },
      h("figcaption", {}, `${title}: `, this.now),
      this.canvas);
  }

  /** Items that finished at these times (Unix ms). */
  record(times) {
    for (const ms of times) {
      const second = Math.floor(ms / 1000);
      this.perSecond.set(second, (this.perSecond.get(second) || 0) + 1);
    }
    if (!this.pending) { // one drawing per frame however many events arrive
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    }
  }

  /** Rates per bucket from the first finish to the last: [{at, rate}]. */
  rates() {
    const seconds = [...this.perSecond.keys()];
    if (seconds.length === 0) return { width: 1, points: [] };
    const first = Math.min(...seconds);
    const last = Math.max(...seconds);
    const width = Math.max(1, Math.ceil((last - first + 1) / MOST_BARS));
    const buckets = new Map();
    for (const [second, count] of this.perSecond) {
      const bucket = first + Math.floor((second - first) / width) * width;
      buckets.set(bucket, (buckets.get(bucket) || 0) + count);
    }
    const points = [];
    for (let at = first; at <= last; at += width) {
      points.push({ at, rate: (buckets.get(at) || 0) / width });
    }
    return { width, points };
  }

  draw() {
    const { width: bucket, points } = this.rates();
    if (points.length === 0) return;
    const peak = Math.max(...points.map((p) => p.rate));
    const total = [...this.perSecond.values()].reduce((a, b) => a + b, 0);
    const span = points[points.length - 1].at - points[0].at + bucket;
    const summary = `peak ${peak.toFixed(1)}, average ${(total / span).toFixed(1)} over ${span} s`;
    setText(this.now, summary);
    this.canvas.setAttribute("aria-label", `${this.title}: ${summary}`);
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    const { width, height } = this.canvas;
    const pad = { left: 44, right: 8, top: 10, bottom: 22 };
    const styles = getComputedStyle(this.canvas);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = styles.color;
    ctx.strokeStyle = styles.borderTopColor;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(pad.left, pad.top);
    ctx.lineTo(pad.left, height - pad.bottom);
    ctx.lineTo(width - pad.right, height - pad.bottom);
    ctx.stroke();
    const top = Math.max(peak, 1);
    ctx.fillText(top.toFixed(top < 10 ? 1 : 0), 4, pad.top + 8);
    ctx.fillText("0", 4, height - pad.bottom);
    ctx.fillText(`${span} s`, width - pad.right - 40, height - 6);
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const barW = Math.max(plotW / points.length, 1);
    ctx.fillStyle = styles.getPropertyValue("--bar").trim() || "#2458c6";
    points.forEach((p, i) => {
      const barH = (p.rate / top) * plotH;
      ctx.fillRect(pad.left + i * barW, height - pad.bottom - barH, Math.max(barW - 1, 1), barH);
    });
  }
}
