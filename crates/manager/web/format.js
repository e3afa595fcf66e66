// How numbers and times read on the page.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 → "1.5 KiB". */
export function bytes(value) {
  if (value === undefined || value === null || Number.isNaN(value)) return '—';
  let unit = 0;
  let amount = Number(value);
  while (Math.abs(amount) >= 1024 && unit < UNITS.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || amount >= 100 ? 0 : amount >= 10 ? 1 : 2;
  return `${amount.toFixed(digits)} ${UNITS[unit]}`;
}

/** Bytes per second. */
export function rate(value) {
  return `${bytes(value)}/s`;
}

/** 3725 s → "1h 2m". */
export function duration(seconds) {
  if (seconds === undefined || seconds === null) return '—';
  const s = Math.max(0, Math.floor(seconds));
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days) return `${days}d ${hours}h`;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${s % 60}s`;
  return `${s}s`;
}

/** Unix milliseconds → local "2026-12-04 14:05:59". */
export function time(ms) {
  const date = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} `
    + `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** `shutting_down` → "shutting down". */
export function words(text) {
  return String(text ?? '').replaceAll('_', ' ');
}

/** The MiB a VM definition asks for, readably. */
export function mebibytes(mib) {
  return bytes(Number(mib) * 1024 * 1024);
}

/** A percentage with one decimal. */
export function percent(value) {
  return value === undefined || value === null ? '—' : `${value.toFixed(1)} %`;
}
