// The event viewer: a filtered, paged list of events (newest first), a chart of the filtered
// events over time, the opened event's images, annotations and data, and new events as they arrive.
// Everything shown comes from senders, so it only ever reaches the page as text
// (textContent, attributes set one by one) — never as HTML.

import { AuthError, eventUrl, getImageUrl, getJson, setApiKey, thumbnailUrl } from "./api.js";
import { formatTime } from "./format.js";
import { classColour, classCounts, drawAnnotated, formatConfidence } from "./overlay.js";
import { renderTimeline } from "./timeline.js";

const PAGE_SIZE = 50;
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const filtersForm = $("filters");
const list = $("events");
const detail = $("detail");
const status = $("status");
const newEvents = $("new-events");

const state = {
  filters: new URLSearchParams(), // as last applied, not as being typed
  offset: 0,
  total: 0,
  newest: 0, // seq of the newest stored event when the list was loaded
  selected: null,
  loading: null,
  charting: null, // the chart's request in flight
  charted: 0, // seq of the newest stored event when the chart was counted
  needsKey: false,
};
const thumbnails = new Map(); // event id -> blob: URL, for the cards on screen
let detailImages = []; // blob: URLs of the opened event

// ---------------------------------------------------------------- helpers

/** A new element with a class and text (or child nodes). */
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function formatValue(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

const ANNOTATION_NAMES = {
  objectDetections: ["box", "boxes"],
  instanceSegmentations: ["polygon", "polygons"],
  keypoints: ["pose", "poses"],
  classifications: ["class", "classes"],
};

function annotationSummary(counts) {
  return Object.entries(counts)
    .map(([list, n]) => `${n} ${ANNOTATION_NAMES[list]?.[n === 1 ? 0 : 1] ?? list}`)
    .join(" · ");
}

function showError(error) {
  if (error instanceof AuthError) {
    state.needsKey = true;
    $("key-form").hidden = false;
    $("key-form").elements.key.focus();
    setStatus("API key needed");
    return;
  }
  setStatus(`error: ${error.message}`, "error");
}

function setStatus(text, kind = "") {
  status.textContent = text;
  status.className = `status ${kind}`;
}

// ---------------------------------------------------------------- filters and the URL

function filterParams() {
  const data = new FormData(filtersForm);
  const params = new URLSearchParams();
  for (const name of ["schema", "solution"]) {
    const value = data.get(name);
    if (value) params.set(name, value);
  }
  for (const name of ["since", "until"]) {
    const value = data.get(name);
    // datetime-local is the browser's local time; the service wants an offset.
    if (value) params.set(name, new Date(value).toISOString());
  }
  const text = data.get("q").trim();
  if (text) params.set("q", text);
  return params;
}

function saveToUrl() {
  const params = new URLSearchParams(state.filters);
  if (state.offset) params.set("offset", state.offset);
  if (state.selected) params.set("event", state.selected);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

function restoreFromUrl() {
  const params = new URLSearchParams(location.search);
  const form = filtersForm.elements;
  form.q.value = params.get("q") ?? "";
  for (const name of ["since", "until"]) {
    const value = params.get(name);
    const date = value ? new Date(value) : null;
    form[name].value = date && !Number.isNaN(date.getTime()) ? toLocalInput(date) : "";
  }
  state.offset = Math.max(0, Number.parseInt(params.get("offset") ?? "0", 10) || 0);
  state.selected = params.get("event");
  for (const name of ["schema", "solution"]) {
    const value = params.get(name);
    if (value) {
      // The other choices arrive with the first page; the service checks this one.
      addOptions(form[name], [value]);
      form[name].value = value;
    }
  }
}

function toLocalInput(date) {
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 19);
}

function addOptions(select, values) {
  const present = new Set([...select.options].map((option) => option.value));
  for (const value of values) {
    if (present.has(value)) continue;
    const option = el("option", "", value);
    option.value = value;
    select.append(option);
  }
}

// ---------------------------------------------------------------- the list

async function loadList({ fresh = false } = {}) {
  const params = new URLSearchParams(state.filters);
  params.set("limit", PAGE_SIZE);
  params.set("offset", state.offset);
  const request = getJson("/viewer/api/events", params);
  state.loading = request;
  let page;
  try {
    page = await request;
  } catch (error) {
    showError(error);
    return;
  }
  if (state.loading !== request) return; // a newer request superseded this one
  state.needsKey = false;
  $("key-form").hidden = true;
  addOptions(filtersForm.elements.schema, page.schemas);
  addOptions(filtersForm.elements.solution, page.solutions);
  const previousNewest = state.newest;
  state.total = page.total;
  state.newest = page.newest;
  newEvents.hidden = true;
  renderList(page.events, fresh ? previousNewest : Infinity);
  renderPager(page.events.length);
  setStatus(`${page.total.toLocaleString("en")} event${page.total === 1 ? "" : "s"} · live`, "live");
  saveToUrl();
}

function renderList(events, freshAfter) {
  const shown = new Set(events.map((event) => event.id));
  for (const [id, url] of thumbnails) {
    if (!shown.has(id)) {
      URL.revokeObjectURL(url);
      thumbnails.delete(id);
    }
  }
  list.replaceChildren(...events.map((event) => card(event, event.seq > freshAfter)));
  if (!events.length) {
    list.append(el("li", "empty", "No events match these filters."));
  }
}

function card(event, fresh) {
  const button = el("button", "card");
  button.type = "button";
  button.dataset.id = event.id;
  button.setAttribute("aria-pressed", String(event.id === state.selected));
  button.addEventListener("click", () => openEvent(event.id));

  let thumb;
  if (event.has_output_image || event.has_input_image) {
    thumb = el("img", "thumb");
    thumb.alt = "";
    thumb.width = 128;
    thumb.height = 72;
    loadThumbnail(event.id, thumb);
  } else {
    thumb = el("span", "no-image", "no image");
  }

  const fields = el("dl", "fields");
  for (const [key, value] of Object.entries(event.event_data)) {
    fields.append(el("dt", "", key), el("dd", "", formatValue(value)));
  }
  const meta = [annotationSummary(event.annotations), event.label, event.has_input_image ? "input image" : ""];
  const body = el(
    "div",
    "card-body",
    el("div", "card-head", el("span", `schema schema-${event.event_schema}`, event.event_schema),
      ...(event.solution === null ? [] : [el("span", "solution", event.solution)]),
      el("time", "time", formatTime(event.inference_timestamp))),
    fields,
    el("div", "card-meta muted", meta.filter(Boolean).join(" · ")),
  );
  body.querySelector("time").dateTime = event.inference_timestamp;
  button.append(thumb, body);
  return el("li", fresh ? "fresh" : "", button);
}

async function loadThumbnail(id, img) {
  try {
    let url = thumbnails.get(id);
    if (!url) {
      url = await getImageUrl(thumbnailUrl(id));
      if (thumbnails.has(id)) {
        URL.revokeObjectURL(url); // another card fetched it meanwhile
        url = thumbnails.get(id);
      } else {
        thumbnails.set(id, url);
      }
    }
    img.src = url;
  } catch {
    img.classList.add("missing");
  }
}

function renderPager(count) {
  const first = count ? state.offset + 1 : 0;
  $("range").textContent = `${first.toLocaleString("en")}–${(state.offset + count).toLocaleString("en")} of ${state.total.toLocaleString("en")}`;
  $("newer").disabled = state.offset === 0;
  $("older").disabled = state.offset + count >= state.total;
}

// ---------------------------------------------------------------- events over time

async function loadTimeline() {
  const request = getJson("/viewer/api/timeline", state.filters);
  state.charting = request;
  let data;
  try {
    data = await request;
  } catch (error) {
    showError(error);
    return;
  }
  if (state.charting !== request) return; // a newer request superseded this one
  state.charted = data.newest;
  renderTimeline(data, showRange);
}

/** Narrow the time filter to [start, end) — a clicked bar — and apply it. */
function showRange(start, end) {
  filtersForm.elements.since.value = toLocalInput(start);
  filtersForm.elements.until.value = toLocalInput(end);
  applyFilters();
}

// ---------------------------------------------------------------- the opened event

async function openEvent(id) {
  state.selected = id;
  for (const button of list.querySelectorAll(".card")) {
    button.setAttribute("aria-pressed", String(button.dataset.id === id));
  }
  saveToUrl();
  let event;
  try {
    event = await getJson(eventUrl(id));
  } catch (error) {
    showError(error);
    return;
  }
  if (state.selected !== id) return;
  for (const url of detailImages) URL.revokeObjectURL(url);
  detailImages = [];
  // An event may have no image entry, and an entry only an input image: that one is drawn then.
  const image = event.images[0] ?? {};
  const drawnUrl = image.outputImageUrl ?? image.inputImageUrl;
  const drawnName = image.outputImageUrl ? "Output image" : "Input image";

  const canvas = el("canvas", "frame");
  canvas.setAttribute("aria-label", `${drawnName.toLowerCase()} with annotations`);
  const legend = el("ul", "legend");
  for (const [name, count] of classCounts(image)) {
    const swatch = el("span", "swatch");
    swatch.style.backgroundColor = classColour(name);
    legend.append(el("li", "", swatch, el("span", "class-name", name), el("span", "muted", ` ×${count}`)));
  }
  const sections = [
    el("header", "detail-head", el("span", `schema schema-${event.event_schema}`, event.event_schema),
      el("code", "event-id", event.id)),
    drawnUrl
      ? el("figure", "output", canvas, el("figcaption", "", drawnName, legend))
      : el("p", "no-image-note muted", "This event has no image."),
  ];
  if (image.classifications) {
    sections.push(table("Classifications", image.classifications.map((c) => [c.class, formatConfidence(c.confidence)])));
  }
  sections.push(
    table("Event", [
      ["inference time", `${formatTime(event.inference_timestamp)} (${event.inference_timestamp})`],
      ["received", event.received_at],
      ["label", image.label],
      ["solution (use case)", event.solution],
      ["Vision Events id", event.vision_event_id],
      ["idempotency key", event.idempotency_key],
    ]),
    table("Event data", Object.entries(event.event_data)),
    table("Custom metadata", Object.entries(event.custom_metadata ?? {}), "none"),
  );
  let inputImg = null;
  if (image.outputImageUrl && image.inputImageUrl) {
    inputImg = el("img", "frame");
    inputImg.alt = "input image";
    sections.splice(2, 0, el("figure", "input", inputImg, el("figcaption", "", "Input image")));
  }
  detail.replaceChildren(...sections);

  if (!drawnUrl) return;
  try {
    const outputUrl = await getImageUrl(drawnUrl);
    detailImages.push(outputUrl);
    const picture = new Image();
    picture.src = outputUrl;
    await picture.decode();
    if (state.selected !== id) return;
    drawAnnotated(canvas, picture, image);
    canvas.dataset.drawn = "true";
    if (inputImg) {
      const inputUrl = await getImageUrl(image.inputImageUrl);
      detailImages.push(inputUrl);
      inputImg.src = inputUrl;
    }
  } catch (error) {
    showError(error);
  }
}

function table(title, rows, emptyText) {
  const list = el("dl", "table");
  for (const [key, value] of rows) {
    if (value === null || value === undefined) continue;
    list.append(el("dt", "", key), el("dd", "", formatValue(value)));
  }
  if (!list.childElementCount && emptyText) list.append(el("dd", "muted", emptyText));
  return el("section", "data", el("h2", "", title), list);
}

// ---------------------------------------------------------------- live updates

async function poll() {
  if (!document.hidden && !state.needsKey) {
    try {
      const { newest } = await getJson("/viewer/api/newest");
      if (newest > state.charted) loadTimeline();
      if (newest > state.newest) {
        if (state.offset === 0) {
          await loadList({ fresh: true });
        } else {
          newEvents.hidden = false;
        }
      }
    } catch (error) {
      showError(error);
    }
  }
  setTimeout(poll, POLL_MS);
}

// ---------------------------------------------------------------- wiring

restoreFromUrl();
state.filters = filterParams();

function applyFilters() {
  state.filters = filterParams();
  state.offset = 0;
  loadList();
  loadTimeline();
}

filtersForm.addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilters();
});
filtersForm.addEventListener("reset", () => {
  // After the form has cleared its fields.
  setTimeout(applyFilters);
});
$("newer").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  loadList();
});
$("older").addEventListener("click", () => {
  state.offset += PAGE_SIZE;
  loadList();
});
newEvents.addEventListener("click", () => {
  state.offset = 0;
  loadList({ fresh: true });
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(event.target.elements.key.value);
  event.target.reset();
  loadList().then(() => state.selected && !state.needsKey && openEvent(state.selected));
  loadTimeline();
});

loadTimeline();
loadList().then(() => {
  if (state.selected && !state.needsKey) openEvent(state.selected);
  setTimeout(poll, POLL_MS);
});
