// Building DOM nodes without HTML strings: every text from the API goes in as a text node, so a
// VM or volume name can never become markup.

/** `h('button.primary#start', {dataset: {test: 'start'}, onclick}, 'Start')`. */
export function h(tag, props = {}, ...children) {
  const [name, ...rest] = tag.split(/(?=[.#])/);
  const node = document.createElement(name || 'div');
  for (const part of rest) {
    if (part.startsWith('.')) node.classList.add(part.slice(1));
    else node.id = part.slice(1);
  }
  setProps(node, props);
  append(node, children);
  return node;
}

/** An SVG element (the graphs). */
export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}

function setProps(node, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'test') node.dataset.test = value;
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key in node && key !== 'list') node[key] = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything in `node` with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A message box: `kind` is 'error', 'info' or 'ok'. Empty text hides it. */
export function message(node, text, kind = 'error') {
  node.textContent = text ?? '';
  node.className = `message ${kind}`;
  node.hidden = !text;
}

/** A table with a header row (a header `[title, 'num']` is right-aligned, as its numbers). */
export function table(headers, rows, props = {}) {
  const th = (header) => (Array.isArray(header) ? h(`th.${header[1]}`, {}, header[0]) : h('th', {}, header));
  return h('table', props,
    h('thead', {}, h('tr', {}, headers.map(th))),
    h('tbody', {}, rows));
}

/** Runs `action` with `button` disabled, showing any error in `errorBox`. */
export async function busy(button, errorBox, action) {
  button.disabled = true;
  if (errorBox) message(errorBox, '');
  try {
    return await action();
  } catch (error) {
    if (errorBox) message(errorBox, error.message);
    else throw error;
  } finally {
    button.disabled = false;
  }
}

/**
 * A confirmation asked inside the page (not `window.confirm`: a native dialog blocks the page's
 * own updates and is awkward to drive from WebDriver). One bar per page, kept outside the parts
 * that are redrawn on events, so a question is not wiped while the user reads it.
 * `ask(question, label, action)` shows it; the confirm button runs `action` (its errors go into
 * `errorBox`) and the bar closes once `action` has answered.
 */
export function confirmBar(errorBox) {
  const text = h('span.confirm-text', { test: 'confirm-text' });
  const yes = h('button#confirm-yes.danger', { type: 'button', test: 'confirm-yes' });
  const no = h('button#confirm-no', { type: 'button', test: 'confirm-no' }, 'Cancel');
  const node = h('div.confirm#confirm', { test: 'confirm', hidden: true, role: 'alertdialog' }, text, yes, no);
  let pending = null;
  const close = () => {
    pending = null;
    node.hidden = true;
  };
  no.addEventListener('click', close);
  yes.addEventListener('click', () => {
    const action = pending;
    if (!action) return;
    busy(yes, errorBox, async () => {
      try {
        await action();
      } finally {
        // Closed after a refusal too: the daemon's reason, in `errorBox`, is what is left to read.
        if (pending === action) close();
      }
    });
  });
  return {
    node,
    ask(question, label, action) {
      text.textContent = question;
      yes.textContent = label;
      pending = action;
      if (errorBox) message(errorBox, '');
      node.hidden = false;
      yes.focus();
    },
    close,
  };
}
