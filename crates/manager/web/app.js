// The browser console's entry point: the session, the top bar and the hash routes. Each page is
// a function that draws into <main> and returns what to do when it is left (stop listening,
// close the console socket).

import { logout, resumeSession, whenSessionLost } from './api.js';
import { h, message } from './dom.js';
import * as events from './events.js';
import * as stats from './stats.js';
import loginPage from './page-login.js';
import vmsPage from './page-vms.js';
import vmPage from './page-vm.js';
import createPage from './page-create.js';
import networksPage from './page-networks.js';
import poolsPage from './page-pools.js';
import poolPage from './page-pool.js';

/** Each route: its pattern, its page, and the nav link it lights up. */
const ROUTES = [
  [/^#\/vms\/([^/]+)$/, vmPage, 'vms'],
  [/^#\/vms$/, vmsPage, 'vms'],
  [/^#\/create$/, createPage, 'create'],
  [/^#\/networks$/, networksPage, 'networks'],
  [/^#\/pools\/([^/]+)$/, poolPage, 'pools'],
  [/^#\/pools$/, poolsPage, 'pools'],
];

const main = document.getElementById('main');
const topbar = document.getElementById('topbar');
const liveStatus = document.getElementById('events-status');
let loggedIn = false;
let leave = null;

function route() {
  leave?.();
  leave = null;
  stats.watch(new Map());
  if (!loggedIn) {
    topbar.hidden = true;
    loginPage(main, { onLogin: loggedInNow });
    return;
  }
  topbar.hidden = false;
  for (const [pattern, page, nav] of ROUTES) {
    const match = location.hash.match(pattern);
    if (!match) continue;
    for (const link of topbar.querySelectorAll('nav a')) link.classList.toggle('current', link.dataset.nav === nav);
    let args;
    try {
      args = match.slice(1).map(decodeURIComponent);
    } catch {
      // A malformed escape (`#/vms/%E0`): the previous page has already left, so show the list
      // rather than leave it up without its listeners.
      location.replace('#/vms');
      return;
    }
    leave = page(main, ...args) ?? null;
    window.scrollTo(0, 0);
    return;
  }
  location.replace('#/vms');
}

function loggedInNow() {
  loggedIn = true;
  events.start();
  if (!ROUTES.some(([pattern]) => pattern.test(location.hash))) location.hash = '#/vms';
  route();
}

function sessionLost() {
  if (!loggedIn) return;
  loggedIn = false;
  events.stop();
  route();
}

async function boot() {
  whenSessionLost(sessionLost);
  events.onStatus((state, detail) => {
    liveStatus.dataset.state = state;
    liveStatus.textContent = state === 'live' ? '● live' : state === 'reconnecting' ? '○ reconnecting' : '';
    liveStatus.title = detail;
  });
  document.getElementById('logout').addEventListener('click', async () => {
    try {
      await logout();
    } finally {
      loggedIn = false;
      events.stop();
      route();
    }
  });
  window.addEventListener('hashchange', route);
  try {
    loggedIn = await resumeSession();
  } catch (error) {
    const box = h('div.message.error', { role: 'alert' });
    message(box, `The daemon cannot be reached: ${error.message}`);
    main.replaceChildren(box);
    return;
  }
  if (loggedIn) loggedInNow();
  else route();
}

boot();
