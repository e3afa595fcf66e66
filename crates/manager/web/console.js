// A VM's serial console in the page: xterm.js attached to the daemon's console WebSocket
// (`/api/v1/vms/{vm}/console`). The daemon sends the scrollback, then the output as it comes,
// as binary messages; what is typed goes back as binary messages (at most 64 KiB each). When the
// socket closes the panel says so and offers to reconnect (the scrollback is sent again, so the
// terminal is cleared first).

import { h, message } from './dom.js';

/** The server's limit on one message. */
const MAX_MESSAGE = 64 * 1024;

/**
 * Opens the console of `vmName` in `container`; returns `close()`, which the page calls when it
 * is left. The terminal is `window.kestrelTerminal` while it is shown (the browser test reads it).
 */
export function openConsole(container, vmName) {
  const status = h('div.console-status', { test: 'console-status' });
  const reconnect = h('button#console-reconnect', { test: 'console-reconnect', hidden: true }, 'Reconnect');
  const screen = h('div.terminal', { test: 'terminal' });
  container.replaceChildren(h('div.console-bar', {}, status, reconnect), screen);

  if (window.kestrelXtermMissing || typeof window.Terminal !== 'function') {
    message(status, window.kestrelXtermMissing ?? 'xterm.js did not load', 'error');
    return () => {};
  }

  const terminal = new window.Terminal({
    cursorBlink: true,
    fontSize: 13,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, monospace',
    scrollback: 5000,
    theme: { background: '#0b0f14', foreground: '#d7dde5', cursor: '#7cc4ff' },
  });
  const fit = new window.FitAddon.FitAddon();
  terminal.loadAddon(fit);
  terminal.open(screen);
  window.kestrelTerminal = terminal;
  const refit = () => {
    try {
      fit.fit();
    } catch {
      // Not laid out yet (a hidden panel): the next resize fits it.
    }
  };
  const observer = new ResizeObserver(refit);
  observer.observe(screen);
  window.addEventListener('resize', refit);
  refit();

  const encoder = new TextEncoder();
  let socket = null;
  let closedByPage = false;

  const input = terminal.onData((text) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const bytes = encoder.encode(text);
    for (let at = 0; at < bytes.length; at += MAX_MESSAGE) socket.send(bytes.subarray(at, at + MAX_MESSAGE));
  });

  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/api/v1/vms/${encodeURIComponent(vmName)}/console`;
    terminal.reset();
    reconnect.hidden = true;
    message(status, 'connecting…', 'info');
    status.dataset.state = 'connecting';
    socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    socket.addEventListener('open', () => {
      message(status, 'connected', 'ok');
      status.dataset.state = 'connected';
      terminal.focus();
    });
    socket.addEventListener('message', (event) => {
      terminal.write(typeof event.data === 'string' ? event.data : new Uint8Array(event.data));
    });
    socket.addEventListener('close', (event) => {
      if (closedByPage) return;
      const why = event.reason ? `: ${event.reason}` : '';
      message(status, `disconnected${why}`, 'error');
      status.dataset.state = 'disconnected';
      reconnect.hidden = false;
    });
  }
  reconnect.addEventListener('click', connect);
  connect();

  return () => {
    closedByPage = true;
    socket?.close();
    input.dispose();
    observer.disconnect();
    window.removeEventListener('resize', refit);
    terminal.dispose();
    if (window.kestrelTerminal === terminal) delete window.kestrelTerminal;
  };
}
