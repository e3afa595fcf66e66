// `#/vms/NAME`: one VM: its lifecycle buttons, definition, disks and cards, how it last ended,
// live graphs, its serial console and its events. Refreshed when an event names it. Edit changes
// the machine's size, command line and autostart (`PUT`, applied at the next start); Delete
// undefines a VM that is not running, after a question asked in the page.

import { api, path } from './api.js';
import { actionButtons, isActive } from './actions.js';
import { graph } from './chart.js';
import { openConsole } from './console.js';
import { busy, confirmBar, h, message, replace, table } from './dom.js';
import * as events from './events.js';
import { bytes, duration, mebibytes, percent, rate, time, words } from './format.js';
import * as stats from './stats.js';
import { stateBadge } from './page-vms.js';

/** How many of the VM's events the log shows. */
const EVENTS_SHOWN = 50;

const field = (label, value, test) => [h('dt', {}, label), h('dd', { test }, value ?? '—')];
const code = (text) => (text ? h('code', {}, text) : '—');

function overview(info) {
  const d = info.definition;
  const started = info.started_at && isActive(info.state)
    ? `${time(info.started_at * 1000)} (${duration(Date.now() / 1000 - info.started_at)} ago)` : null;
  return h('dl.facts', {},
    field('UUID', code(info.uuid)),
    field('Process', info.pid ? `pid ${info.pid}` : null),
    field('vCPUs', d.cpus, 'vm-cpus'),
    field('Memory', mebibytes(d.memory_mib), 'vm-memory'),
    field('Started', started),
    field('Transport', d.transport),
    field('Autostart', d.autostart ? 'yes' : 'no'),
    field('On crash', d.on_crash),
    field('Devices', [d.rng && 'rng', d.vsock && `vsock cid ${d.vsock.cid}`,
      d.balloon && `balloon ${d.balloon.size_mib} MiB`].filter(Boolean).join(', ') || null));
}

function boot(d) {
  return h('dl.facts', {},
    field('Kernel', code(d.kernel), 'vm-kernel'),
    field('Initrd', code(d.initrd)),
    field('Command line', code(d.cmdline), 'vm-cmdline'));
}

function disks(d) {
  if (!d.disks?.length) return h('p.muted', {}, 'No disks.');
  const letter = (index) => String.fromCharCode(97 + index);
  return table(['Guest', 'Source', 'Format', 'Mode', 'Serial', 'Cache'], d.disks.map((disk, index) => h('tr', {},
    h('td', {}, index < 26 ? `/dev/vd${letter(index)}` : `#${index}`),
    h('td', {}, disk.volume
      ? h('a', { href: `#/pools/${encodeURIComponent(disk.volume.split('/')[0])}` }, disk.volume)
      : code(disk.path)),
    h('td', {}, disk.volume ? 'the pool\'s record' : disk.format ?? 'raw'),
    h('td', {}, disk.readonly ? 'read-only' : 'read-write'),
    h('td', {}, disk.id ?? '—'),
    h('td', {}, disk.cache ?? 'default'))), { test: 'vm-disks' });
}

function nics(d, taps) {
  if (!d.nics?.length) return h('p.muted', {}, 'No network cards.');
  return table(['Card', 'On', 'MAC', 'Address', 'Host tap'], d.nics.map((nic, index) => h('tr', {},
    h('td', {}, `eth${index}`),
    h('td', {}, nic.network ? h('a', { href: '#/networks' }, `network ${nic.network}`) : `tap ${nic.tap}`),
    h('td', {}, code(nic.mac)),
    h('td', {}, nic.ip ?? (nic.network ? 'DHCP' : '—')),
    h('td', {}, taps?.[index] ?? (nic.tap ?? '—')))), { test: 'vm-nics' });
}

function lastExit(info) {
  const parts = [];
  if (info.state === 'saved') {
    parts.push(h('p.note', { test: 'vm-saved' },
      'Its memory and device state are saved on disk: Start or Restore resumes it where it was.'));
  }
  const exit = info.last_exit;
  if (exit) {
    const how = [exit.outcome, exit.status !== null && exit.status !== undefined ? `status ${exit.status}` : null,
      exit.signal ? `signal ${exit.signal}` : null].filter(Boolean).join(', ');
    parts.push(h('p', {}, `Last ended ${time(exit.at * 1000)}: `, h('b', {}, how)));
    if (exit.console_tail?.length) {
      parts.push(h('details', {}, h('summary', {}, 'Its last console lines'),
        h('pre.tail', {}, exit.console_tail.join('\n'))));
    }
  }
  if (parts.length) return parts;
  return h('p.muted', {}, isActive(info.state) ? 'This is its first run.' : 'It has not run yet.');
}

function eventLog(name) {
  const mine = events.events().filter((event) => event.object === name).slice(-EVENTS_SHOWN).reverse();
  if (!mine.length) return h('p.muted', {}, 'No events yet.');
  return table(['When', 'What', 'Detail'], mine.map((event) => h('tr', { dataset: { kind: event.kind } },
    h('td.when', {}, time(event.at_ms)),
    h('td', {}, words(event.kind)),
    h('td', {}, event.detail ?? ''))), { test: 'vm-events' });
}

function graphs(name) {
  const samples = stats.samples(name);
  const pick = (key) => samples.map((s) => s[key]);
  const cpuKnown = samples.some((s) => s.cpu !== null);
  const memoryKnown = samples.some((s) => s.memory !== null);
  return [
    cpuKnown
      ? graph({ title: 'CPU', series: [{ label: 'busy', values: pick('cpu') }], format: percent,
        fixedMax: 100, test: 'graph-cpu' })
      : graph({ title: 'vCPU exits', series: [{ label: 'exits/s', values: pick('exits') }],
        format: (v) => `${Math.round(v)}/s`, test: 'graph-cpu' }),
    graph({ title: 'Memory (resident)', series: [{ label: 'RSS', values: memoryKnown ? pick('memory') : [] }],
      format: bytes, floor: 1024 * 1024, test: 'graph-memory' }),
    graph({ title: 'Disk', series: [{ label: 'read', values: pick('diskRead') },
      { label: 'write', values: pick('diskWrite') }], format: rate, floor: 1024, test: 'graph-disk' }),
    graph({ title: 'Network', series: [{ label: 'rx', values: pick('netRx') },
      { label: 'tx', values: pick('netTx') }], format: rate, floor: 1024, test: 'graph-net' }),
  ];
}

/**
 * The edit form: the fields a user changes most. The rest of the definition (disks, cards,
 * devices) is sent back as GET returned it, since `PUT` replaces the whole definition.
 */
function editForm({ onSave, onCancel }) {
  const input = (id, props) => h(`input#${id}`, { name: id, test: id, ...props });
  const row = (label, control) => h('div.form-row', {}, h('label', { htmlFor: control.id }, label), control);
  const cpus = input('edit-cpus', { type: 'number', min: 1, max: 254 });
  const memory = input('edit-memory', { type: 'number', min: 16, step: 1 });
  const cmdline = input('edit-cmdline', { placeholder: 'Kestrel\'s default when empty', autocomplete: 'off' });
  const autostart = input('edit-autostart', { type: 'checkbox' });
  const error = h('div#vm-edit-error', { test: 'vm-edit-error', hidden: true, role: 'alert' });
  const save = h('button#vm-edit-save.primary', { type: 'submit', test: 'vm-edit-save' }, 'Save');
  const cancel = h('button#vm-edit-cancel', { type: 'button', test: 'vm-edit-cancel' }, 'Cancel');
  // noValidate: the daemon is the one judge of a definition (as on the create page), and its
  // one-line refusal is shown here rather than the browser's own bubble.
  const form = h('form.card.edit#vm-edit', { test: 'vm-edit', hidden: true, noValidate: true },
    h('h2', {}, 'Edit'),
    h('p.note', { test: 'vm-edit-note' },
      'Changes apply at the next start: a running VM keeps its size and command line until then.'),
    row('vCPUs', cpus),
    row('Memory (MiB)', memory),
    row('Command line', cmdline),
    h('label.check', {}, autostart, ' Start with the daemon'),
    error,
    h('div.form-actions', {}, save, cancel));
  cancel.addEventListener('click', onCancel);

  /**
   * The definition with the form's fields in place of `d`'s. An empty or broken number is
   * refused here: left out, the daemon would quietly put its default (1 vCPU, 256 MiB) in place
   * of the VM's size. An empty command line means Kestrel's default, as its placeholder says.
   */
  function changed(d) {
    const next = { ...d };
    const number = (text, label) => {
      const value = Number(text.trim());
      if (!text.trim() || !Number.isInteger(value)) throw new Error(`${label} must be a whole number, not '${text}'`);
      return value;
    };
    next.cpus = number(cpus.value, 'vCPUs');
    next.memory_mib = number(memory.value, 'Memory (MiB)');
    next.cmdline = cmdline.value.trim() || undefined; // undefined: left out of the JSON
    next.autostart = autostart.checked;
    if (next.cmdline === undefined) delete next.cmdline;
    return next;
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(save, error, () => onSave(changed));
  });
  return {
    form,
    open(d) {
      cpus.value = d.cpus;
      memory.value = d.memory_mib;
      cmdline.value = d.cmdline ?? '';
      autostart.checked = Boolean(d.autostart);
      message(error, '');
      form.hidden = false;
      cpus.focus();
    },
    close() {
      form.hidden = true;
    },
  };
}

export default function vmPage(main, name) {
  const title = h('h1', {}, name);
  const badge = h('span');
  const buttons = h('div.actions#vm-actions', { test: 'vm-actions' });
  const error = h('div#vm-error', { test: 'vm-error', hidden: true, role: 'alert' });
  const confirm = confirmBar(error);
  // Outside `buttons`, which is redrawn on every event: these keep their own state.
  const editButton = h('button#vm-edit-open.action', { type: 'button', test: 'vm-edit-open' }, 'Edit');
  const deleteButton = h('button#vm-delete.action.danger', { type: 'button', test: 'vm-delete', disabled: true,
    title: 'undefine it' }, 'Delete');
  const sections = {
    overview: h('div'), boot: h('div'), disks: h('div'), nics: h('div'), exit: h('div'),
  };
  const charts = h('div.charts#vm-graphs', { test: 'vm-graphs' });
  const consolePanel = h('div.console#console', { test: 'console' });
  const log = h('div#vm-event-log');
  const edit = editForm({
    onCancel: () => edit.close(),
    onSave: async (changed) => {
      // The latest definition, not the one the form was opened on: an edit made elsewhere
      // meanwhile keeps whatever this form does not show.
      const latest = await api.get(path('/v1/vms/{vm}', name));
      const info = await api.put(path('/v1/vms/{vm}', name), changed(latest.definition));
      edit.close();
      if (!gone) draw(info);
    },
  });
  const card = (heading, ...content) => h('section.card', {}, h('h2', {}, heading), ...content);
  main.replaceChildren(h('section', { test: 'page-vm', dataset: { vm: name } },
    h('div.page-head', {}, h('div.title', {}, h('a.back', { href: '#/vms' }, 'VMs'), title, badge),
      h('div.actions', {}, buttons, editButton, deleteButton)),
    error,
    confirm.node,
    edit.form,
    h('div.grid', {},
      card('Overview', sections.overview, h('h2.sub', {}, 'Last run'), sections.exit),
      card('Boot', sections.boot),
      card('Disks', sections.disks),
      card('Network cards', sections.nics)),
    card('Live', charts),
    card('Serial console', consolePanel),
    card('Events', log)));

  let gone = false;
  let state = null;
  let definition = null; // as the last GET returned it: what an edit starts from
  let closeConsole = null;
  let reconnectConsole = null;

  editButton.addEventListener('click', () => definition && edit.open(definition));
  deleteButton.addEventListener('click', () => confirm.ask(
    `Delete the VM ${name}? Its definition, console log and saved state are removed; its volumes stay in their pools.`,
    'Delete VM',
    async () => {
      await api.del(path('/v1/vms/{vm}', name));
      location.hash = '#/vms';
    }));

  function draw(info) {
    const vm = info; // VmInfo holds VmSummary's fields flattened
    replace(badge, stateBadge(vm.state, { id: 'vm-state' }));
    replace(buttons, actionButtons(vm, { errorBox: error, done: refresh }));
    definition = info.definition;
    // The daemon refuses to undefine an active VM; the button says so before it is pressed.
    deleteButton.disabled = isActive(vm.state);
    deleteButton.title = isActive(vm.state) ? 'stop it first (Shut down or Destroy)' : 'undefine it';
    replace(sections.overview, overview(info));
    replace(sections.boot, boot(info.definition));
    replace(sections.disks, disks(info.definition));
    replace(sections.nics, nics(info.definition, info.taps));
    replace(sections.exit, lastExit(info));
    stats.watch(isActive(vm.state) ? new Map([[name, vm.cpus]]) : new Map());
    const wasActive = isActive(state);
    state = vm.state;
    if (!closeConsole) {
      closeConsole = openConsole(consolePanel, name);
      reconnectConsole = () => consolePanel.querySelector('#console-reconnect:not([hidden])')?.click();
    } else if (isActive(state) && !wasActive) {
      reconnectConsole(); // it just started: attach to its new output
    }
  }

  async function refresh() {
    try {
      const info = await api.get(path('/v1/vms/{vm}', name));
      if (gone) return;
      message(error, '');
      draw(info);
    } catch (failure) {
      if (!gone) message(error, failure.message);
    }
  }

  const drawGraphs = () => replace(charts, graphs(name));
  const unsubscribe = events.subscribe((batch) => {
    replace(log, eventLog(name));
    if (batch.some((event) => event.object === name)) refresh();
  });
  const unsample = stats.onSample(drawGraphs);
  drawGraphs();
  replace(log, eventLog(name));
  refresh();
  return () => {
    gone = true;
    unsubscribe();
    unsample();
    closeConsole?.();
  };
}
