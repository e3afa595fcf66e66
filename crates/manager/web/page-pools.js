// `#/pools`: the storage pools, their space and how many volumes each holds; a form to define
// one and a Delete button per pool. The daemon's refusals (a relative path, a pool whose volumes
// VMs use) are shown as it words them.

import { api, path } from './api.js';
import { busy, confirmBar, h, replace, table } from './dom.js';
import * as events from './events.js';
import { bytes } from './format.js';

export default function poolsPage(main) {
  const error = h('div#pools-error', { test: 'pools-error', hidden: true, role: 'alert' });
  const confirm = confirmBar(error);
  const body = h('div#pool-table', {}, h('p.muted', {}, 'Loading…'));
  main.replaceChildren(h('section', { test: 'page-pools' },
    h('div.page-head', {}, h('h1', {}, 'Storage pools')),
    h('p.hint', {}, 'A pool is a directory of raw and qcow2 volumes.'),
    error,
    confirm.node,
    body,
    h('div.grid', {}, defineForm())));


  function defineForm() {
    const name = h('input#pool-name', { name: 'pool-name', test: 'pool-name', placeholder: 'images',
      autocomplete: 'off' });
    const dir = h('input#pool-path', { name: 'pool-path', test: 'pool-path',
      placeholder: '/var/lib/kestrel/pools/images', autocomplete: 'off' });
    const formError = h('div#pool-form-error', { test: 'pool-form-error', hidden: true, role: 'alert' });
    const submit = h('button#pool-define.primary', { type: 'submit', test: 'pool-define' }, 'Define');
    const form = h('form.card.inline-form#pool-form', { test: 'pool-form', noValidate: true },
      h('h2', {}, 'New pool'),
      h('div.form-row', {}, h('label', { htmlFor: 'pool-name' }, 'Name'), name),
      h('div.form-row', {}, h('label', { htmlFor: 'pool-path' }, 'Directory'), dir),
      h('p.hint', {}, 'An absolute path on the host: created (private to the daemon) if missing, '
        + 'used as it is otherwise; the files already in it become volumes.'),
      formError,
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(submit, formError, async () => {
        await api.post('/v1/pools', { name: name.value.trim(), path: dir.value.trim() });
        name.value = '';
        dir.value = '';
        await refresh();
      });
    });
    return form;
  }

  function deleteButton(pool) {
    const name = pool.definition.name;
    const node = h('button.action.danger', { type: 'button', test: 'pool-delete' }, 'Delete');
    node.addEventListener('click', () => confirm.ask(
      `Delete the pool ${name}? The daemon forgets it; its directory and files stay on the host.`,
      'Delete pool',
      async () => {
        await api.del(path('/v1/pools/{pool}', name));
        await refresh();
      }));
    return node;
  }

  function draw(pools) {
    if (!pools.length) {
      replace(body, h('p.empty', {}, 'No pools are defined: the form below defines one.'));
      return;
    }
    const rows = pools.sort((a, b) => a.definition.name.localeCompare(b.definition.name)).map((pool) => {
      const name = pool.definition.name;
      const used = pool.capacity_bytes ? 1 - pool.available_bytes / pool.capacity_bytes : 0;
      return h('tr', { dataset: { pool: name, test: 'pool-row' } },
        h('td', {}, h('a', { href: `#/pools/${encodeURIComponent(name)}`, test: 'pool-link' }, name)),
        h('td', {}, h('code', {}, pool.definition.path)),
        h('td.num', {}, pool.volumes),
        h('td.num', {}, bytes(pool.available_bytes)),
        h('td.num', {}, bytes(pool.capacity_bytes)),
        h('td', {}, h('meter', { min: 0, max: 1, value: used, title: `${Math.round(used * 100)} % used` })),
        h('td.actions', {}, deleteButton(pool)));
    });
    replace(body, table(['Name', 'Directory', ['Volumes', 'num'], ['Available', 'num'], ['Capacity', 'num'], 'Used',
      ''], rows, { id: 'pools' }));
  }

  // Pools have no events of their own; a volume made or deleted changes a pool's count.
  const view = events.follow({
    load: () => api.get('/v1/pools'),
    draw,
    errorBox: error,
    relevant: (batch) => batch.some((event) => event.kind.startsWith('volume_')),
  });
  const refresh = view.refresh;
  return view.leave;
}
