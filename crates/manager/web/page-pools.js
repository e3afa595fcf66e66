// `#/pools`: the storage pools, their space and how many volumes each holds.

import { api } from './api.js';
import { h, message, replace, table } from './dom.js';
import { bytes } from './format.js';

export default function poolsPage(main) {
  const error = h('div#pools-error', { test: 'pools-error', hidden: true, role: 'alert' });
  const body = h('div#pool-table', {}, h('p.muted', {}, 'Loading…'));
  main.replaceChildren(h('section', { test: 'page-pools' },
    h('div.page-head', {}, h('h1', {}, 'Storage pools')),
    h('p.hint', {}, 'A pool is a directory of raw and qcow2 volumes. Define one with ',
      h('code', {}, 'kestrel pool define'), '.'),
    error,
    body));

  let gone = false;
  api.get('/v1/pools').then((pools) => {
    if (gone) return;
    if (!pools.length) {
      replace(body, h('p.empty', {}, 'No pools are defined.'));
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
        h('td', {}, h('meter', { min: 0, max: 1, value: used, title: `${Math.round(used * 100)} % used` })));
    });
    replace(body, table(['Name', 'Directory', ['Volumes', 'num'], ['Available', 'num'], ['Capacity', 'num'], 'Used'], rows, { id: 'pools' }));
  }, (failure) => !gone && message(error, failure.message));
  return () => {
    gone = true;
  };
}
