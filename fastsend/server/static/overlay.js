// Annotations drawn over an image on a <canvas>: boxes with class and confidence,
// instance polygons and keypoints (joined by their skeleton when it is known, see skeletons.js).
// Coordinates are image pixels; boxes are centre-based.

import { isFound, skeletonsByClass } from "./skeletons.js";

const PALETTE = [
  "#ff3b30", "#34c759", "#0a84ff", "#ff9f0a", "#bf5af2",
  "#00c7be", "#ff2d92", "#ffd60a", "#5e5ce6", "#a2845e",
];

/** The colour of a class: the same name always gets the same colour. */
export function classColour(name) {
  let hash = 2166136261; // FNV-1a
  for (const char of String(name)) {
    hash = Math.imul(hash ^ char.codePointAt(0), 16777619) >>> 0;
  }
  return PALETTE[hash % PALETTE.length];
}

const BOXED = ["objectDetections", "instanceSegmentations", "keypoints"];

/** Every class in the image entry with how often it appears, in first-seen order. */
export function classCounts(details) {
  const counts = new Map();
  for (const list of [...BOXED, "classifications"]) {
    for (const item of details[list] ?? []) {
      counts.set(item.class, (counts.get(item.class) ?? 0) + 1);
    }
  }
  return counts;
}

/** Draw `image` on `canvas` at its natural size, then the annotations of `details` over it. */
export function drawAnnotated(canvas, image, details) {
  const { naturalWidth: width, naturalHeight: height } = image;
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const line = Math.max(2, Math.round(Math.max(width, height) / 400));
  context.lineWidth = line;
  context.lineJoin = "round";

  for (const item of details.instanceSegmentations ?? []) {
    drawPolygon(context, item.points, classColour(item.class));
  }
  const labels = [];
  for (const list of BOXED) {
    for (const item of details[list] ?? []) {
      const colour = classColour(item.class);
      const left = item.x - item.width / 2;
      const top = item.y - item.height / 2;
      context.strokeStyle = colour;
      context.strokeRect(left, top, item.width, item.height);
      labels.push({ text: `${item.class} ${formatConfidence(item.confidence)}`, left, top, colour });
    }
  }
  const skeletons = skeletonsByClass(details.keypoints);
  for (const item of details.keypoints ?? []) {
    const colour = classColour(item.class);
    drawSkeleton(context, item.keypoints, skeletons.get(item.class), colour);
    drawKeypoints(context, item.keypoints, colour, line * 2);
  }
  // Labels last, so no box crosses a label.
  const fontSize = Math.max(12, Math.round(Math.max(width, height) / 60));
  context.font = `600 ${fontSize}px system-ui, sans-serif`;
  context.textBaseline = "top";
  for (const label of labels) {
    drawLabel(context, label, fontSize, line, width);
  }
}

export function formatConfidence(confidence) {
  return `${Math.round(confidence * 100)}%`;
}

function drawPolygon(context, points, colour) {
  if (!points || points.length < 3) return;
  context.beginPath();
  context.moveTo(points[0][0], points[0][1]);
  for (const [x, y] of points.slice(1)) context.lineTo(x, y);
  context.closePath();
  context.globalAlpha = 0.25;
  context.fillStyle = colour;
  context.fill();
  context.globalAlpha = 1;
  context.strokeStyle = colour;
  context.stroke();
}

/** A line for each edge whose two keypoints the detection has (and found). */
function drawSkeleton(context, keypoints, edges, colour) {
  if (!edges) return;
  const byId = new Map((keypoints ?? []).filter(isFound).map((point) => [point.id, point]));
  context.beginPath();
  for (const [a, b] of edges) {
    const from = byId.get(a);
    const to = byId.get(b);
    if (!from || !to) continue;
    context.moveTo(from.x, from.y);
    context.lineTo(to.x, to.y);
  }
  context.strokeStyle = colour;
  context.lineCap = "round";
  context.stroke();
}

function drawKeypoints(context, keypoints, colour, radius) {
  for (const point of (keypoints ?? []).filter(isFound)) {
    context.beginPath();
    context.arc(point.x, point.y, radius, 0, 2 * Math.PI);
    context.fillStyle = colour;
    context.fill();
  }
}

function drawLabel(context, { text, left, top, colour }, fontSize, line, canvasWidth) {
  const padding = Math.round(fontSize / 4);
  const width = context.measureText(text).width + 2 * padding;
  const height = fontSize + 2 * padding;
  // Above the box when there is room, else inside its top edge; never past the right edge.
  const x = Math.max(0, Math.min(left - line / 2, canvasWidth - width));
  const y = top - height - line / 2 >= 0 ? top - height - line / 2 : top + line / 2;
  context.fillStyle = colour;
  context.fillRect(x, y, width, height);
  context.fillStyle = "#111";
  context.fillText(text, x + padding, y + padding);
}
