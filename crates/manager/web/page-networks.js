// `#/networks`: the daemon's networks with their bridge, subnet, DHCP range and who is plugged
// in, each started or stopped from here. Fetched again after each batch of events.

import { api, path } from './api.js';
import { busy, h, message, replace, table } from './dom.js';
import * as events from './events.js';

function stateBadge(active) {
  const state = active ? 'active' : 'inactive';
  return h(`span.badge.state-${active ? 'running' : 'stopped'}`, { test: 'network-state', dataset: { state } }, state);
}

export default function networksPage(main) {
  const error = h('div#networks-error', { test: 'networks-error', hidden: true, role: 'alert' });
  const body = h('div#network-table', {}, h('p.muted', {}, 'Loading…'));
  main.replaceChildren(h('section', { test: 'page-networks' },
    h('div.page-head', {}, h('h1', {}, 'Networks')),
    h('p.hint', {}, 'Each network is a bridge with NAT (or isolated), DHCP and DNS. Define one with ',
      h('code', {}, 'kestrel net define'), '.'),
    error,
    body));

  let gone = false;

  function button(network, action, enabled) {
    const node = h('button.action', { type: 'button', test: `network-${action}`, disabled: !enabled },
      action === 'start' ? 'Start' : 'Stop');
    node.addEventListener('click', () => busy(node, error, async () => {
      await api.post(path(`/v1/networks/{net}/${action}`, network.definition.name));
      await refresh();
    }));
    return node;
  }

  function draw(networks) {
    if (!networks.length) {
      replace(body, h('p.empty', {}, 'No networks are defined.'));
      return;
    }
    const rows = networks.map((n) => {
      const d = n.definition;
      const range = n.dhcp_range ? `${n.dhcp_range[0]} – ${n.dhcp_range[1]}` : '—';
      return h('tr', { dataset: { network: d.name, test: 'network-row' } },
        h('td', {}, h('b', {}, d.name)),
        h('td', {}, stateBadge(n.active)),
        h('td', {}, d.mode),
        h('td', {}, h('code', {}, d.address)),
        h('td', {}, n.subnet || '—'),
        h('td', {}, h('code', {}, n.bridge)),
        h('td', {}, range),
        h('td', {}, d.domain ?? '—'),
        h('td', { title: n.ports.map((p) => `${p.vm} eth${p.index} (${p.tap})`).join('\n') },
          n.ports.map((p) => p.vm).filter((vm, i, all) => all.indexOf(vm) === i).join(', ') || '—'),
        h('td.num', {}, n.leases.length),
        h('td', {}, d.autostart ? 'yes' : 'no'),
        h('td.actions', {}, button(n, 'start', !n.active), button(n, 'stop', n.active)));
    });
    replace(body, table(['Name', 'State', 'Mode', 'Host address', 'Subnet', 'Bridge', 'DHCP range', 'Domain',
      'VMs', ['Leases', 'num'], 'Autostart', ''], rows, { id: 'networks' }));
  }

  async function refresh() {
    try {
      const networks = await api.get('/v1/networks');
      if (gone) return;
      draw(networks.sort((a, b) => a.definition.name.localeCompare(b.definition.name)));
    } catch (failure) {
      if (!gone) message(error, failure.message);
    }
  }

  const unsubscribe = events.subscribe(refresh);
  refresh();
  return () => {
    gone = true;
    unsubscribe();
  };
}
