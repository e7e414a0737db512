// How times and counts read on the page: local time, as the browser's clock shows it, with its zone.

const pad = (n, width = 2) => String(n).padStart(width, "0");

/**
 * An ISO-8601 instant (or a Date) as local "YYYY-MM-DD HH:MM:SS UTC+HH:MM" ("UTC" alone at offset 0),
 * with ".mmm" after the seconds when `milliseconds`; text it cannot read stays as it is.
 */
export function formatTime(value, { milliseconds = false } = {}) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const fraction = milliseconds ? `.${pad(date.getMilliseconds(), 3)}` : "";
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}${fraction} ${formatZone(date)}`
  );
}

/** The browser's UTC offset at `date`: "UTC", "UTC+05:30", "UTC-08:00". */
export function formatZone(date) {
  const offset = -date.getTimezoneOffset();
  if (offset === 0) return "UTC";
  const minutes = Math.abs(offset);
  return `UTC${offset > 0 ? "+" : "-"}${pad(Math.floor(minutes / 60))}:${pad(minutes % 60)}`;
}

/** A count with thousands separators. */
export const formatCount = (n) => n.toLocaleString("en");

const UNITS = [
  [365 * 86400000, "year"],
  [86400000, "day"],
  [3600000, "hour"],
  [60000, "minute"],
  [1000, "second"],
  [1, "millisecond"],
];

/** A span of whole milliseconds in its largest whole unit: "10-minute", "1-day", "5-millisecond". */
export function formatSpan(milliseconds) {
  const [size, unit] = UNITS.find(([size]) => milliseconds % size === 0) ?? UNITS[UNITS.length - 1];
  return `${milliseconds / size}-${unit}`;
}
