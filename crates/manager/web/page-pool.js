// `#/pools/NAME`: a pool's volumes (size, format, backing volume, users), and forms to create an
// empty volume, thin-clone one, resize one, or delete one. The daemon's refusals (a volume in use, a clone's
// base) are shown as it words them.

import { api, path } from './api.js';
import { busy, h, replace, table } from './dom.js';
import * as events from './events.js';
import { bytes } from './format.js';

const SIZE_UNITS = { MiB: 1 << 20, GiB: 1 << 30 };

function sizeOf(text, unit) {
  const amount = Number(text);
  return text.trim() && Number.isFinite(amount) ? Math.round(amount * SIZE_UNITS[unit]) : undefined;
}

export default function poolPage(main, pool) {
  const error = h('div#pool-error', { test: 'pool-error', hidden: true, role: 'alert' });
  const info = h('p.hint');
  const body = h('div#volume-table', {}, h('p.muted', {}, 'Loading…'));
  const base = h('select#clone-base', { test: 'clone-base' });
  const resized = h('select#resize-volume', { test: 'resize-volume' });
  const resizeSize = h('input#resize-size', { test: 'resize-size', type: 'number', min: 0, step: 'any' });
  const forms = h('div.grid', {}, createForm(), cloneForm(), resizeForm());
  main.replaceChildren(h('section', { test: 'page-pool', dataset: { pool } },
    h('div.page-head', {}, h('div.title', {}, h('a.back', { href: '#/pools' }, 'Pools'), h('h1', {}, pool))),
    info,
    error,
    body,
    forms));


  function createForm() {
    const name = h('input#volume-name', { test: 'volume-name', placeholder: 'data.qcow2', autocomplete: 'off' });
    const size = h('input#volume-size', { test: 'volume-size', type: 'number', min: 0, step: 'any', value: 1 });
    const unit = h('select#volume-unit', {}, Object.keys(SIZE_UNITS).map((u) =>
      h('option', { value: u, selected: u === 'GiB' }, u)));
    const format = h('select#volume-format', { test: 'volume-format' },
      h('option', { value: 'qcow2' }, 'qcow2'), h('option', { value: 'raw' }, 'raw'));
    const submit = h('button#volume-create.primary', { type: 'submit', test: 'volume-create' }, 'Create');
    const form = h('form.card.inline-form', {}, h('h2', {}, 'New empty volume'),
      h('div.form-row', {}, h('label', { htmlFor: 'volume-name' }, 'Name'), name),
      h('div.form-row', {}, h('label', { htmlFor: 'volume-size' }, 'Size'), h('div.joined', {}, size, unit)),
      h('div.form-row', {}, h('label', { htmlFor: 'volume-format' }, 'Format'), format),
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(submit, error, async () => {
        await api.post(path('/v1/pools/{pool}/volumes', pool),
          { name: name.value.trim(), format: format.value, size_bytes: sizeOf(size.value, unit.value) });
        name.value = '';
        await refresh();
      });
    });
    return form;
  }

  function cloneForm() {
    const name = h('input#clone-name', { test: 'clone-name', placeholder: 'web.qcow2', autocomplete: 'off' });
    const submit = h('button#clone-create.primary', { type: 'submit', test: 'clone-create' }, 'Clone');
    const form = h('form.card.inline-form', {}, h('h2', {}, 'Thin clone'),
      h('p.hint', {}, 'A qcow2 overlay over a base volume: the base stays as it is.'),
      h('div.form-row', {}, h('label', { htmlFor: 'clone-base' }, 'Base'), base),
      h('div.form-row', {}, h('label', { htmlFor: 'clone-name' }, 'New name'), name),
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(submit, error, async () => {
        await api.post(path('/v1/pools/{pool}/volumes', pool),
          { name: name.value.trim(), format: 'qcow2', clone_of: base.value });
        name.value = '';
        await refresh();
      });
    });
    return form;
  }

  function resizeForm() {
    const unit = h('select#resize-unit', { test: 'resize-unit' }, Object.keys(SIZE_UNITS).map((u) =>
      h('option', { value: u, selected: u === 'GiB' }, u)));
    const shrink = h('input#resize-shrink', { test: 'resize-shrink', type: 'checkbox' });
    const submit = h('button#resize-submit.primary', { type: 'submit', test: 'resize-submit' }, 'Resize');
    const form = h('form.card.inline-form#resize-form', { test: 'resize-form', noValidate: true },
      h('h2', {}, 'Resize'),
      h('p.hint', {}, 'Not while a running VM has it open. A smaller size drops the data past it, so the '
        + 'daemon refuses one unless Shrink is ticked.'),
      h('div.form-row', {}, h('label', { htmlFor: 'resize-volume' }, 'Volume'), resized),
      h('div.form-row', {}, h('label', { htmlFor: 'resize-size' }, 'New size'), h('div.joined', {}, resizeSize, unit)),
      h('label.check', {}, shrink, ' Shrink (drops the data past the new size)'),
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(submit, error, async () => {
        // `size_bytes` is required (VolumeResize): an empty field is sent as null and refused
        // by the daemon in its own words.
        await api.post(path('/v1/pools/{pool}/volumes/{vol}/resize', pool, resized.value),
          { size_bytes: sizeOf(resizeSize.value, unit.value) ?? null, shrink: shrink.checked });
        shrink.checked = false;
        await refresh();
      });
    });
    return form;
  }

  /** The row's Resize: picks the volume in the resize form and puts the cursor on its size. */
  function resizeButton(volume) {
    const node = h('button.action', { type: 'button', test: 'volume-resize' }, 'Resize');
    node.addEventListener('click', () => {
      resized.value = volume.name;
      resizeSize.scrollIntoView({ block: 'center' });
      resizeSize.focus();
    });
    return node;
  }

  function deleteButton(volume) {
    const node = h('button.action.danger', { type: 'button', test: 'volume-delete' }, 'Delete');
    node.addEventListener('click', () => {
      if (!window.confirm(`Delete the volume ${volume.name} of ${pool}? Its data is lost.`)) return;
      busy(node, error, async () => {
        await api.del(path('/v1/pools/{pool}/volumes/{vol}', pool, volume.name));
        await refresh();
      });
    });
    return node;
  }

  function draw(poolInfo, volumes) {
    replace(info, h('code', {}, poolInfo.definition.path), ` · ${bytes(poolInfo.available_bytes)} available of `,
      bytes(poolInfo.capacity_bytes));
    // Both lists keep the volume chosen in them across a redraw.
    for (const select of [base, resized]) {
      const chosen = select.value;
      replace(select, volumes.map((v) => h('option', { value: v.name, selected: v.name === chosen }, v.name)));
    }
    if (!volumes.length) {
      replace(body, h('p.empty', {}, 'This pool holds no volumes.'));
      return;
    }
    const rows = volumes.map((v) => h('tr', { dataset: { volume: v.name, test: 'volume-row' } },
      h('td', {}, h('b', {}, v.name)),
      h('td', {}, v.format),
      h('td.num', {}, bytes(v.size_bytes)),
      h('td.num', {}, bytes(v.allocated_bytes)),
      h('td', {}, v.backing ?? '—'),
      h('td', {}, v.used_by.length ? v.used_by.map((vm, i) => [i ? ', ' : '',
        h('a', { href: `#/vms/${encodeURIComponent(vm)}` }, vm)]) : '—'),
      h('td.actions', {}, resizeButton(v), deleteButton(v))));
    replace(body, table(['Name', 'Format', ['Size', 'num'], ['On disk', 'num'], 'Backing', 'Used by', ''], rows, { id: 'volumes' }));
  }

  const view = events.follow({
    load: () => Promise.all([
      api.get(path('/v1/pools/{pool}', pool)),
      api.get(path('/v1/pools/{pool}/volumes', pool)),
    ]),
    draw: ([poolInfo, volumes]) => draw(poolInfo, volumes.sort((a, b) => a.name.localeCompare(b.name))),
    errorBox: error,
    relevant: (batch) => batch.some((event) => event.kind.startsWith('volume_')),
  });
  const refresh = view.refresh;
  return view.leave;
}
