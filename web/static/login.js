// Login page: the API token to POST /api/auth/login, which sets the HttpOnly cookie; then back where we came from.
"use strict";

(function () {
  const form = document.getElementById("login-form");
  const next = form.dataset.next || "/";
  LP.bindForm(form, {
    url: "/api/auth/login",
    onSuccess: (status) => {
      if (status.authenticated) location.href = next;
      else LP.toast("this server has no API token: nothing to sign in to", "ok");
    },
  });
})();
