// How times and counts read on the page: local time, as the browser's clock shows it.

const pad = (n) => String(n).padStart(2, "0");

/** An ISO-8601 instant (or a Date) as local "YYYY-MM-DD HH:MM:SS"; text it cannot read stays as it is. */
export function formatTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** A count with thousands separators. */
export const formatCount = (n) => n.toLocaleString("en");

const UNITS = [
  [365 * 86400, "year"],
  [86400, "day"],
  [3600, "hour"],
  [60, "minute"],
  [1, "second"],
];

/** A span of whole seconds in its largest whole unit: "10-minute", "1-day", "7-day". */
export function formatSpan(seconds) {
  const [size, unit] = UNITS.find(([size]) => seconds % size === 0) ?? UNITS[UNITS.length - 1];
  return `${seconds / size}-${unit}`;
}
