// Sign-in: trade a console token for a session cookie. A token in the URL
// fragment (what `meshguard demo` prints) is used once and removed from the
// address bar; fragments never reach the server or a Referer.
(function () {
  'use strict';
  const form = document.getElementById('login');
  const tokenInput = document.getElementById('token');
  const nameInput = document.getElementById('name');
  const errBox = document.getElementById('login-error');

  function fail(msg) {
    errBox.textContent = msg;
    errBox.hidden = false;
  }

  async function signIn(token, name) {
    const body = { token: token };
    if (name) body.name = name;
    const res = await fetch('api/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      credentials: 'same-origin',
    });
    if (res.status === 200) {
      location.replace('./');
      return;
    }
    if (res.status === 429) fail('Too many attempts: wait a moment.');
    else if (res.status === 400) fail('Check the name: letters, digits and . _ @ - only.');
    else fail('That token is not valid.');
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    signIn(tokenInput.value.trim(), nameInput.value.trim());
  });

  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    history.replaceState(null, '', location.pathname);
    signIn(decodeURIComponent(m[1]), '');
  }
})();
