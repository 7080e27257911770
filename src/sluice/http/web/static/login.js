// The login form: on success, on to the page asked for (a path of this site only).
"use strict";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.hidden = true;
  const r = await fetch("/api/v1/login", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: ev.target.username.value, password: ev.target.password.value})});
  if (r.ok) { location.href = ev.target.dataset.next; return; }
  const body = await r.json().catch(() => ({}));
  err.textContent = typeof body.detail === "string" ? body.detail : "Log in failed";
  err.hidden = false;
});
