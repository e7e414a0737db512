// The events-over-time chart: one stacked bar per time bucket, one colour per schema, drawn as SVG
// from /viewer/api/timeline. The SVG's units are one bucket across and one event up, stretched to
// the plot's box; the text around it is HTML, so no label is ever stretched.
// Schema names and counts reach the page as text and attributes only, never as markup.

import { formatCount, formatSpan, formatTime } from "./format.js";

const BAR = 0.8; // of a bucket's width; the rest is the gap between bars

const $ = (id) => document.getElementById(id);

/**
 * Draw `data` (the timeline route's answer). `onPick(start, end)` is called with a bucket's Dates
 * when it is clicked.
 */
export function renderTimeline(data, onPick) {
  const chart = $("timeline-chart");
  const width = data.bucket_ms;
  const peak = Math.max(1, ...data.buckets.map(bucketTotal));
  chart.setAttribute("viewBox", `0 0 ${Math.max(1, data.buckets.length)} ${peak}`);
  chart.replaceChildren(
    ...data.buckets.map((bucket, index) => bucketGroup(chart, bucket, index, width, peak, onPick)),
  );
  $("timeline-empty").hidden = data.total > 0;
  $("timeline-peak").textContent = data.total ? formatCount(peak) : "";
  $("timeline-caption").textContent = data.total
    ? `${formatCount(data.total)} event${data.total === 1 ? "" : "s"} · ${formatSpan(width)} buckets`
    : "";
  renderLegend(data.totals);
  renderAxis(data.buckets, width);
}

// Buckets narrower than a second are told apart by their milliseconds.
const inside = (width) => ({ milliseconds: width < 1000 });

const bucketTotal = (bucket) => Object.values(bucket.counts).reduce((sum, n) => sum + n, 0);

function svg(chart, tag, className, attributes) {
  const node = document.createElementNS(chart.namespaceURI, tag);
  node.setAttribute("class", className);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function bucketGroup(chart, bucket, index, width, peak, onPick) {
  const start = new Date(bucket.start);
  const end = new Date(start.getTime() + width);
  const group = svg(chart, "g", "bucket", {});
  group.dataset.start = bucket.start;
  const title = svg(chart, "title", "", {});
  const lines = Object.entries(bucket.counts).map(([schema, n]) => `${schema}: ${formatCount(n)}`);
  const range = `${formatTime(start, inside(width))} – ${formatTime(end, inside(width))}`;
  title.textContent = [range, ...(lines.length ? lines : ["no events"])].join("\n");
  // The whole column answers the pointer, so a short bar is as easy to hit as a tall one.
  group.append(title, svg(chart, "rect", "hit", { x: index, y: 0, width: 1, height: peak }));
  let top = peak;
  for (const [schema, n] of Object.entries(bucket.counts).sort(([a], [b]) => a.localeCompare(b))) {
    top -= n;
    const bar = svg(chart, "rect", `bar series-${schema}`, {
      x: index + (1 - BAR) / 2, y: top, width: BAR, height: n,
    });
    bar.dataset.schema = schema;
    bar.dataset.count = n;
    group.append(bar);
  }
  group.addEventListener("click", () => onPick(start, end));
  return group;
}

function renderLegend(totals) {
  const items = Object.entries(totals).map(([schema, n]) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch series-${schema}`;
    const name = document.createElement("span");
    name.className = "class-name";
    name.textContent = schema;
    const count = document.createElement("span");
    count.className = "muted";
    count.textContent = ` ${formatCount(n)}`;
    item.append(swatch, name, count);
    return item;
  });
  $("timeline-legend").replaceChildren(...items);
}

function renderAxis(buckets, width) {
  const from = $("timeline-from");
  const to = $("timeline-to");
  if (!buckets.length) {
    from.textContent = to.textContent = "";
    return;
  }
  const first = new Date(buckets[0].start);
  const last = new Date(new Date(buckets[buckets.length - 1].start).getTime() + width);
  from.dateTime = first.toISOString();
  from.textContent = formatTime(first, inside(width));
  to.dateTime = last.toISOString();
  to.textContent = formatTime(last, inside(width));
}
