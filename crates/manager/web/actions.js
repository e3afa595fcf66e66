// The lifecycle buttons of a VM, each enabled in the states the daemon allows it in
// (crates/manager/src/vms/lifecycle.rs), so the page offers only what can work.

import { api, path } from './api.js';
import { busy, h } from './dom.js';

const ACTIVE = ['starting', 'running', 'paused', 'shutting_down'];

/** Every action: its label, the states it is enabled in, and how it reads in the button title. */
export const ACTIONS = [
  { name: 'start', label: 'Start', states: ['stopped', 'crashed', 'saved'], title: 'boot it (a saved VM resumes)' },
  { name: 'shutdown', label: 'Shut down', states: ['running', 'shutting_down'], title: 'press the ACPI power button and wait' },
  { name: 'reboot', label: 'Reboot', states: ['running'], title: 'Ctrl+Alt+Del' },
  { name: 'suspend', label: 'Suspend', states: ['running'], title: 'park the vCPUs' },
  { name: 'resume', label: 'Resume', states: ['paused'], title: 'run the vCPUs again' },
  { name: 'save', label: 'Save', states: ['running', 'paused'], title: 'write its memory and state to disk and stop' },
  { name: 'restore', label: 'Restore', states: ['saved'], title: 'start from the saved state' },
  { name: 'destroy', label: 'Destroy', states: ACTIVE, title: 'kill the VMM at once', danger: true },
];

export function isActive(state) {
  return ACTIVE.includes(state);
}

/**
 * The buttons for one VM (or only those `names`), sending `POST /v1/vms/{vm}/ACTION`; errors go
 * into `errorBox`, and `done()` runs after each answer (the events stream refreshes the page too).
 */
export function actionButtons(vm, { errorBox, done = () => {}, names } = {}) {
  return ACTIONS.filter((action) => !names || names.includes(action.name)).map((action) => {
    const button = h(`button.action${action.danger ? '.danger' : ''}`, {
      type: 'button',
      test: `action-${action.name}`,
      id: names ? undefined : `action-${action.name}`,
      title: action.title,
      disabled: !action.states.includes(vm.state),
    }, action.label);
    button.addEventListener('click', () => busy(button, errorBox, async () => {
      await api.post(path(`/v1/vms/{vm}/${action.name}`, vm.name));
      done();
    }).finally(() => {
      button.disabled = !action.states.includes(vm.state);
    }));
    return button;
  });
}
