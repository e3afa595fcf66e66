// `#/vms`: every VM with its state, size, uptime and a sparkline of CPU and I/O. The list is
// fetched again after each batch of events; the running VMs' figures come every 2 s.

import { api } from './api.js';
import { actionButtons, isActive } from './actions.js';
import { sparkline } from './chart.js';
import { h, message, replace, table } from './dom.js';
import * as events from './events.js';
import { duration, mebibytes, words } from './format.js';
import * as stats from './stats.js';

/** A state badge (also used on the VM's page). */
export function stateBadge(state, props = {}) {
  return h(`span.badge.state-${state}`, { test: 'vm-state', dataset: { state }, ...props }, words(state));
}

/** The sparkline of a VM's last samples: CPU (or vCPU exits) and disk + network bytes. */
function spark(name) {
  const samples = stats.samples(name);
  const cpuKnown = samples.some((s) => s.cpu !== null);
  return sparkline([
    { label: cpuKnown ? 'CPU' : 'vCPU exits/s', values: samples.map((s) => (cpuKnown ? s.cpu : s.exits)) },
    { label: 'disk and network bytes/s', values: samples.map((s) => s.diskRead + s.diskWrite + s.netRx + s.netTx) },
  ], { test: 'vm-spark' });
}

export default function vmsPage(main) {
  const error = h('div#vms-error', { test: 'vms-error', hidden: true, role: 'alert' });
  const body = h('div#vm-table', { test: 'vm-table' }, h('p.muted', {}, 'Loading…'));
  main.replaceChildren(h('section', { test: 'page-vms' },
    h('div.page-head', {},
      h('h1', {}, 'Virtual machines'),
      h('a.button.primary#new-vm', { href: '#/create', test: 'new-vm' }, 'New VM')),
    error,
    body));

  let live = new Map(); // name → { spark cell, uptime cell } of each active VM

  function draw(vms) {
    live = new Map();
    if (!vms.length) {
      replace(body, h('p.empty', {}, 'No VMs are defined yet. ', h('a', { href: '#/create' }, 'Create one'), '.'));
      return;
    }
    const rows = vms.map((vm) => {
      const sparkCell = h('td.spark');
      const uptimeCell = h('td.num', { test: 'vm-uptime' }, '—');
      if (isActive(vm.state)) live.set(vm.name, { sparkCell, uptimeCell });
      return h('tr', { dataset: { vm: vm.name, test: 'vm-row' } },
        h('td', {}, h('a.vm-link', { href: `#/vms/${encodeURIComponent(vm.name)}`, test: 'vm-link' }, vm.name)),
        h('td', {}, stateBadge(vm.state)),
        h('td.num', {}, vm.cpus),
        h('td.num', {}, mebibytes(vm.memory_mib)),
        uptimeCell,
        sparkCell,
        h('td.actions', {}, actionButtons(vm, { errorBox: error, names: ['start', 'shutdown', 'destroy'] })));
    });
    replace(body, table(['Name', 'State', ['vCPUs', 'num'], ['Memory', 'num'], ['Uptime', 'num'], 'CPU · I/O', ''], rows,
      { className: 'vms', id: 'vms' }));
    stats.watch(new Map(vms.filter((vm) => isActive(vm.state)).map((vm) => [vm.name, vm.cpus])));
    figures();
  }

  function figures() {
    for (const [name, { sparkCell, uptimeCell }] of live) {
      replace(sparkCell, spark(name));
      uptimeCell.textContent = duration(stats.latest(name)?.uptime_secs);
    }
  }

  const view = events.follow({
    load: () => api.get('/v1/vms'),
    draw: (vms) => {
      message(error, '');
      draw(vms.sort((a, b) => a.name.localeCompare(b.name)));
    },
    errorBox: error,
  });
  const unsample = stats.onSample(figures);
  return () => {
    view.leave();
    unsample();
  };
}
