// The login page: a token minted on the host (`kestrel daemon web-token`) is exchanged for a
// session cookie. The server's refusal (wrong token, too many tries) is shown as it words it.

import { login } from './api.js';
import { busy, h, message } from './dom.js';

export default function loginPage(main, { onLogin }) {
  const token = h('input#token', {
    type: 'password', name: 'token', autocomplete: 'off', spellcheck: false,
    placeholder: 'kst_…', test: 'token', required: true,
  });
  const submit = h('button#login.primary', { type: 'submit', test: 'login' }, 'Log in');
  const error = h('div#login-error', { test: 'login-error', hidden: true, role: 'alert' });
  const form = h('form.login-card', {},
    h('h1', {}, h('img', { src: '/assets/favicon.svg', alt: '' }), 'Kestrel'),
    h('p.hint', {}, 'Paste an access token. On the host, ', h('code', {}, 'kestrel daemon web-token'),
      ' prints one.'),
    h('label', { htmlFor: 'token' }, 'Token'),
    token,
    error,
    submit);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(submit, error, async () => {
      await login(token.value.trim());
      onLogin();
    });
  });
  main.replaceChildren(h('section.login', { test: 'page-login' }, form));
  token.focus();
}
