// The daemon's API through the web console's server: `/auth/*` for the session and `/api/<path>`
// for the daemon's own routes. Every request that changes something carries the session's CSRF
// token; an answer of 401 means the session is gone, and the app goes back to the login page.

let csrf = null;
let onSessionLost = () => {};

/** An answer that is not 2xx: `message` is the daemon's one line (`ErrorBody.error`). */
export class ApiError extends Error {
  constructor(status, message, kind) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

/** What to do when a request finds the session gone (app.js shows the login page). */
export function whenSessionLost(callback) {
  onSessionLost = callback;
}

export function setCsrf(token) {
  csrf = token;
}

async function errorOf(response) {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return new ApiError(response.status, body.error, body.kind);
  } catch {
    // Not the daemon's JSON (a proxy's page, say): the status line is the best we have.
  }
  const line = text.trim().split('\n')[0];
  return new ApiError(response.status, line || `${response.status} ${response.statusText}`, 'http');
}

/** One request; the parsed JSON answer (null when empty). Throws `ApiError`. */
export async function request(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['X-Kestrel-CSRF'] = csrf;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (error) {
    throw new ApiError(0, `the daemon cannot be reached (${error.message})`, 'network');
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && path.startsWith('/api/')) onSessionLost();
    throw error;
  }
  const text = await response.text();
  return text.trim() ? JSON.parse(text) : null;
}

/** The daemon's API: `api.get('/v1/vms')` is `GET /api/v1/vms`. */
export const api = {
  get: (path) => request('GET', `/api${path}`),
  post: (path, body) => request('POST', `/api${path}`, body),
  put: (path, body) => request('PUT', `/api${path}`, body),
  del: (path) => request('DELETE', `/api${path}`),
};

/** `/v1/vms/{name}` with the name escaped. */
export function path(template, ...names) {
  return template.replace(/\{[^}]+\}/g, () => encodeURIComponent(names.shift()));
}

/** Logs in with a token; keeps the session's CSRF token. */
export async function login(token) {
  const answer = await request('POST', '/auth/login', { token });
  setCsrf(answer.csrf);
}

/** Whether the browser still holds a session (and its CSRF token). */
export async function resumeSession() {
  try {
    const answer = await request('GET', '/auth/session');
    setCsrf(answer.csrf);
    return true;
  } catch (error) {
    if (error.status === 401) return false;
    throw error;
  }
}

export async function logout() {
  try {
    await request('POST', '/auth/logout');
  } finally {
    setCsrf(null);
  }
}

/**
 * Reads an NDJSON answer (`GET /api/v1/events?follow=true`) line by line, calling `onLine` with
 * each parsed object, until the stream ends or `signal` aborts it.
 */
export async function readLines(path, signal, onLine) {
  const response = await fetch(`/api${path}`, { credentials: 'same-origin', cache: 'no-store', signal });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) onSessionLost();
    throw error;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let end;
    while ((end = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, end).trim();
      pending = pending.slice(end + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
}
