// The daemon's event stream, followed for as long as the user is logged in: the history the
// daemon keeps, then each new event. Pages subscribe and hear about events in batches (so the
// thousands of stored events read at connect time make one refresh, not thousands). When the
// stream drops it reconnects with `?since=` the last event seen, backing off from 1 s to 30 s.

import { readLines } from './api.js';
import { message } from './dom.js';

/** The most events kept in the browser (the daemon keeps 10,000). */
const KEEP = 2000;
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;
/** Events that arrive within this long of each other are handed to subscribers together. */
const BATCH_MS = 100;

const history = [];
const subscribers = new Set();
const statusListeners = new Set();
let lastId = null;
let controller = null;
let retryTimer = null;
let retryMs = FIRST_RETRY_MS;
let batch = [];
let batchTimer = null;
let status = 'stopped';

/**
 * Keeps a page's view current: `load()` now and after each batch of events `relevant` accepts,
 * then `draw(result)`, unless the page was left meanwhile; a failure is shown in `errorBox`.
 * Returns `refresh` (for after the page's own actions) and `leave` (when the page goes).
 */
export function follow({ load, draw, errorBox, relevant = () => true }) {
  let gone = false;
  async function refresh() {
    try {
      const result = await load();
      if (!gone) draw(result);
    } catch (failure) {
      if (!gone) message(errorBox, failure.message);
    }
  }
  const unsubscribe = subscribe((batch) => {
    if (relevant(batch)) refresh();
  });
  refresh();
  return {
    refresh,
    leave() {
      gone = true;
      unsubscribe();
    },
  };
}

/** Every event still kept, oldest first. */
export function events() {
  return history;
}

/** Calls `callback(newEvents)` after each batch; returns the unsubscribe function. */
export function subscribe(callback) {
  subscribers.add(callback);
  return () => subscribers.delete(callback);
}

/** Calls `callback(status, detail)` on 'live', 'reconnecting' and 'stopped'. */
export function onStatus(callback) {
  statusListeners.add(callback);
  callback(status, '');
  return () => statusListeners.delete(callback);
}

function setStatus(next, detail = '') {
  status = next;
  for (const callback of statusListeners) callback(next, detail);
}

/** Starts following (after login). */
export function start() {
  if (controller) return;
  connect();
}

/** Stops following and forgets the history (at logout). */
export function stop() {
  controller?.abort();
  controller = null;
  clearTimeout(retryTimer);
  history.length = 0;
  lastId = null;
  retryMs = FIRST_RETRY_MS;
  setStatus('stopped');
}

function connect() {
  controller = new AbortController();
  const mine = controller;
  const since = lastId === null ? '' : `&since=${lastId}`;
  setStatus('live');
  readLines(`/v1/events?follow=true${since}`, mine.signal, (line) => {
    if (typeof line.error === 'string') throw new Error(line.error); // fell behind: reconnect
    receive(line);
    retryMs = FIRST_RETRY_MS;
  }).then(
    () => dropped(mine, 'the event stream ended'),
    (error) => dropped(mine, error.message),
  );
}

function receive(event) {
  if (lastId !== null && event.id <= lastId) return;
  lastId = event.id;
  history.push(event);
  if (history.length > KEEP) history.splice(0, history.length - KEEP);
  batch.push(event);
  if (!batchTimer) batchTimer = setTimeout(flush, BATCH_MS);
}

function flush() {
  const delivered = batch;
  batch = [];
  batchTimer = null;
  for (const callback of subscribers) callback(delivered);
}

function dropped(which, why) {
  if (controller !== which) return; // stopped, or already replaced
  if (which.signal.aborted) return;
  const wait = retryMs;
  retryMs = Math.min(retryMs * 2, LAST_RETRY_MS);
  setStatus('reconnecting', `${why}; retrying in ${Math.round(wait / 1000)} s`);
  retryTimer = setTimeout(() => {
    if (controller === which) connect();
  }, wait);
}
