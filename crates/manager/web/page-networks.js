// `#/networks`: the daemon's networks with their bridge, subnet, DHCP range and who is plugged
// in, each started, stopped or deleted from here, and a form to define one. Fetched again after
// each batch of events. The form checks nothing itself: the daemon's one-line refusal (a bad
// address, an overlapping subnet, a network in use) is shown as it words it.

import { api, path } from './api.js';
import { busy, confirmBar, h, replace, table } from './dom.js';
import * as events from './events.js';

function stateBadge(active) {
  const state = active ? 'active' : 'inactive';
  return h(`span.badge.state-${active ? 'running' : 'stopped'}`, { test: 'network-state', dataset: { state } }, state);
}

/** The definition the form describes (an empty domain left out: the network has none). */
function definitionOf(fields) {
  const definition = {
    name: fields.name.value.trim(),
    address: fields.address.value.trim(),
    mode: fields.mode.value,
    autostart: fields.autostart.checked,
  };
  if (fields.domain.value.trim()) definition.domain = fields.domain.value.trim();
  return definition;
}

export default function networksPage(main) {
  const error = h('div#networks-error', { test: 'networks-error', hidden: true, role: 'alert' });
  const confirm = confirmBar(error);
  const body = h('div#network-table', {}, h('p.muted', {}, 'Loading…'));
  main.replaceChildren(h('section', { test: 'page-networks' },
    h('div.page-head', {}, h('h1', {}, 'Networks')),
    h('p.hint', {}, 'Each network is a bridge with NAT (or isolated), DHCP and DNS.'),
    error,
    confirm.node,
    body,
    h('div.grid', {}, defineForm())));


  function defineForm() {
    const input = (id, props = {}) => h(`input#${id}`, { name: id, test: id, autocomplete: 'off', ...props });
    const fields = {
      name: input('network-name', { placeholder: 'lab' }),
      address: input('network-address', { placeholder: '10.77.0.1/24' }),
      mode: h('select#network-mode', { name: 'network-mode', test: 'network-mode' },
        h('option', { value: 'nat' }, 'nat: guests reach beyond the host'),
        h('option', { value: 'isolated' }, 'isolated: guests reach the host only')),
      domain: input('network-domain', { placeholder: 'optional, e.g. lab.test' }),
      autostart: input('network-autostart', { type: 'checkbox' }),
    };
    const formError = h('div#network-form-error', { test: 'network-form-error', hidden: true, role: 'alert' });
    const submit = h('button#network-define.primary', { type: 'submit', test: 'network-define' }, 'Define');
    const row = (label, control) => h('div.form-row', {}, h('label', { htmlFor: control.id }, label), control);
    const form = h('form.card.inline-form#network-form', { test: 'network-form', noValidate: true },
      h('h2', {}, 'New network'),
      row('Name', fields.name),
      row('Address', fields.address),
      h('p.hint', {}, 'The host\'s address on the bridge with the prefix; the subnet, DHCP range and '
        + 'gateway follow from it.'),
      row('Mode', fields.mode),
      row('Domain', fields.domain),
      h('label.check', {}, fields.autostart, ' Start with the daemon'),
      formError,
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(submit, formError, async () => {
        await api.post('/v1/networks', definitionOf(fields));
        // Defining starts nothing (no bridge, no DHCP server): Start in its row does.
        fields.name.value = '';
        await refresh();
      });
    });
    return form;
  }

  function deleteButton(network) {
    const name = network.definition.name;
    const node = h('button.action.danger', { type: 'button', test: 'network-delete' }, 'Delete');
    node.addEventListener('click', () => confirm.ask(
      `Delete the network ${name}? Its definition and DHCP leases are removed, and its bridge comes down if it is up.`,
      'Delete network',
      async () => {
        await api.del(path('/v1/networks/{net}', name));
        await refresh();
      }));
    return node;
  }

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
      replace(body, h('p.empty', {}, 'No networks are defined: the form below defines one.'));
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
        h('td.actions', {}, button(n, 'start', !n.active), button(n, 'stop', n.active), deleteButton(n)));
    });
    replace(body, table(['Name', 'State', 'Mode', 'Host address', 'Subnet', 'Bridge', 'DHCP range', 'Domain',
      'VMs', ['Leases', 'num'], 'Autostart', ''], rows, { id: 'networks' }));
  }

  const view = events.follow({
    load: () => api.get('/v1/networks'),
    draw: (networks) => draw(networks.sort((a, b) => a.definition.name.localeCompare(b.definition.name))),
    errorBox: error,
  });
  const refresh = view.refresh;
  return view.leave;
}
