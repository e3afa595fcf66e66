// `#/create`: a form for a new VM, sent as a VmDefinition to `POST /v1/vms`. The form checks
// nothing itself: the daemon validates the definition and its one-line refusal is shown next to
// the form, so the page and the CLI always agree on what is allowed.

import { api, path } from './api.js';
import { busy, h, message } from './dom.js';

function input(id, props = {}) {
  return h(`input#${id}`, { name: id, test: id, ...props });
}

function row(label, control, hint) {
  return h('div.form-row', {},
    h('label', { htmlFor: control.id }, label),
    control,
    hint ? h('small.hint', {}, hint) : null);
}

/** Every volume of every pool, as `POOL/VOLUME` (a pool that fails to list is left out). */
async function allVolumes() {
  const pools = await api.get('/v1/pools');
  const lists = await Promise.all(pools.map((pool) =>
    api.get(path('/v1/pools/{pool}/volumes', pool.definition.name)).catch(() => [])));
  return lists.flat().map((volume) => `${volume.pool}/${volume.name}`);
}

/** The definition the form describes (empty fields left out: the daemon's defaults apply). */
function definitionOf(form) {
  const value = (id) => form.querySelector(`#${id}`).value.trim();
  const definition = { name: value('create-name'), kernel: value('create-kernel') };
  if (value('create-initrd')) definition.initrd = value('create-initrd');
  if (value('create-cmdline')) definition.cmdline = value('create-cmdline');
  if (value('create-cpus')) definition.cpus = Number(value('create-cpus'));
  if (value('create-memory')) definition.memory_mib = Number(value('create-memory'));
  if (value('create-disk')) definition.disks = [{ volume: value('create-disk') }];
  if (value('create-network')) {
    const nic = { network: value('create-network') };
    if (value('create-ip')) nic.ip = value('create-ip');
    definition.nics = [nic];
  }
  definition.autostart = form.querySelector('#create-autostart').checked;
  return definition;
}

export default function createPage(main) {
  const disk = h('select#create-disk', { name: 'create-disk', test: 'create-disk' },
    h('option', { value: '' }, 'none'));
  const network = h('select#create-network', { name: 'create-network', test: 'create-network' },
    h('option', { value: '' }, 'none'));
  const error = h('div#create-error', { test: 'create-error', hidden: true, role: 'alert' });
  const submit = h('button#create-submit.primary', { type: 'submit', test: 'create-submit' }, 'Define VM');
  const form = h('form.create', { test: 'create-form', noValidate: true },
    h('fieldset', {}, h('legend', {}, 'Machine'),
      row('Name', input('create-name', { placeholder: 'web', autocomplete: 'off' })),
      row('vCPUs', input('create-cpus', { type: 'number', min: 1, max: 254, value: 1 })),
      row('Memory (MiB)', input('create-memory', { type: 'number', min: 16, step: 1, value: 256 })),
      h('label.check', {}, input('create-autostart', { type: 'checkbox' }), ' Start with the daemon')),
    h('fieldset', {}, h('legend', {}, 'Boot'),
      row('Kernel', input('create-kernel', { placeholder: '/var/lib/kestrel/kernels/vmlinux' }),
        'An absolute path on the host: Kestrel boots the kernel directly (ELF vmlinux or bzImage).'),
      row('Initrd', input('create-initrd', { placeholder: 'optional' })),
      row('Command line', input('create-cmdline', { placeholder: 'console=ttyS0 root=/dev/vda' }),
        'Kestrel\'s default when empty.'),
      row('Boot disk', disk,
        'A pool volume, the guest\'s /dev/vda: boot from it with root=/dev/vda on the command line.')),
    h('fieldset', {}, h('legend', {}, 'Network'),
      row('Network', network),
      row('Fixed address', input('create-ip', { placeholder: 'optional, e.g. 10.77.0.10' }),
        'A DHCP reservation on the network, outside its DHCP range.')),
    error,
    h('div.form-actions', {}, submit, h('a.button', { href: '#/vms' }, 'Cancel')));
  main.replaceChildren(h('section', { test: 'page-create' },
    h('div.page-head', {}, h('h1', {}, 'New VM')), form));

  let gone = false;
  allVolumes().then((volumes) => {
    if (!gone) disk.append(...volumes.map((v) => h('option', { value: v }, v)));
  }, (failure) => !gone && message(error, `The pools could not be listed: ${failure.message}`));
  api.get('/v1/networks').then((networks) => {
    if (!gone) {
      network.append(...networks.map((n) => h('option', { value: n.definition.name },
        `${n.definition.name} (${n.subnet || n.definition.address}${n.active ? '' : ', stopped'})`)));
    }
  }, (failure) => !gone && message(error, `The networks could not be listed: ${failure.message}`));

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(submit, error, async () => {
      const info = await api.post('/v1/vms', definitionOf(form));
      location.hash = `#/vms/${encodeURIComponent(info.name)}`;
    });
  });
  return () => {
    gone = true;
  };
}
