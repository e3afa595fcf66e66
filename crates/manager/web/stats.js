// Live figures for running VMs: `GET /v1/vms/{vm}/stats` every 2 s for each VM a page watches,
// turned into rates (the daemon's counters are totals since the VMM started) and kept as the
// last 60 samples per VM, so a graph survives moving between pages.

import { api, path } from './api.js';

const PERIOD_MS = 2000;
/** Two minutes of samples. */
export const SAMPLES = 60;

/** name → { previous: raw stats + time, samples: [...] } */
const series = new Map();
const watched = new Map(); // name → vCPU count
const listeners = new Set();
let timer = null;

/**
 * One sample: `cpu` (% of the VM's vCPUs busy, from the VMM's CPU time; `null` when the daemon
 * does not report it), `exits` (vCPU exits/s, what the CPU graph falls back to), `memory` (bytes
 * resident), `diskRead`/`diskWrite` and `netRx`/`netTx` (bytes/s).
 */
export function samples(name) {
  return series.get(name)?.samples ?? [];
}

/** The last stats answer of `name` (uptime, counters), or null. */
export function latest(name) {
  return series.get(name)?.previous?.stats ?? null;
}

/** Polls exactly these VMs (`Map` of name → vCPUs) from now on; an empty map stops polling. */
export function watch(vms) {
  watched.clear();
  for (const [name, cpus] of vms) watched.set(name, cpus);
  if (watched.size && !timer) {
    timer = setInterval(poll, PERIOD_MS);
    poll();
  } else if (!watched.size && timer) {
    clearInterval(timer);
    timer = null;
  }
}

/** Calls `callback()` after each poll; returns the unsubscribe function. */
export function onSample(callback) {
  listeners.add(callback);
  return () => listeners.delete(callback);
}

/** Whether a poll is still waiting for the daemon: a tick then is skipped, so polls never
 * overlap and each VM's `previous` sample is replaced in order (else rates come out wrong). */
let polling = false;

async function poll() {
  if (polling) return;
  polling = true;
  try {
    await Promise.all([...watched].map(([name, cpus]) => pollOne(name, cpus)));
  } finally {
    polling = false;
  }
  for (const callback of listeners) callback();
}

async function pollOne(name, cpus) {
  let stats;
  try {
    stats = await api.get(path('/v1/vms/{vm}/stats', name));
  } catch {
    return; // a VM that just stopped or went away: no sample this round
  }
  const now = performance.now();
  const entry = series.get(name) ?? { previous: null, samples: [] };
  series.set(name, entry);
  const sample = rates(entry.previous, { stats, at: now }, cpus);
  entry.previous = { stats, at: now };
  if (sample) {
    entry.samples.push(sample);
    if (entry.samples.length > SAMPLES) entry.samples.shift();
  }
}

const counter = (stats, group, name) => Number(stats.counters?.[group]?.[name] ?? 0);
const exitsOf = (stats) => Object.entries(stats.counters?.vcpu ?? {})
  .filter(([name]) => name.startsWith('exit_'))
  .reduce((sum, [, value]) => sum + Number(value), 0);

/** The rates between two polls, or null when there is no earlier poll of the same run. */
export function rates(previous, current, cpus) {
  if (!previous) return null;
  const seconds = (current.at - previous.at) / 1000;
  const [a, b] = [previous.stats, current.stats];
  // A restarted VM starts its counters again (and its uptime): start a new baseline.
  if (seconds <= 0 || (b.uptime_secs ?? 0) < (a.uptime_secs ?? 0)) return null;
  const per = (value) => Math.max(0, value) / seconds;
  const cpuKnown = a.cpu_time_us !== undefined && a.cpu_time_us !== null && b.cpu_time_us !== undefined
    && b.cpu_time_us !== null;
  return {
    cpu: cpuKnown ? Math.min(100, (per(b.cpu_time_us - a.cpu_time_us) / 1e6 / Math.max(1, cpus)) * 100) : null,
    exits: per(exitsOf(b) - exitsOf(a)),
    memory: b.memory_rss_bytes ?? null,
    diskRead: per(counter(b, 'block', 'read_bytes') - counter(a, 'block', 'read_bytes')),
    diskWrite: per(counter(b, 'block', 'write_bytes') - counter(a, 'block', 'write_bytes')),
    netRx: per(counter(b, 'net', 'rx_bytes_count') - counter(a, 'net', 'rx_bytes_count')),
    netTx: per(counter(b, 'net', 'tx_bytes_count') - counter(a, 'net', 'tx_bytes_count')),
  };
}
