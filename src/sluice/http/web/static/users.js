// The users page (administrators): create, promote, reset passwords, delete.
"use strict";
(() => {
  const {api, el} = Sluice;
  const out = document.getElementById("users-result");
  const fail = e => out.replaceChildren(el("span", {class: "error"}, e.message));
  async function load() {
    const users = await api("GET", "/api/v1/users");
    document.querySelector("#users tbody").replaceChildren(...users.map(u => el("tr", {"data-user": u.username},
      el("td", {}, u.username), el("td", {}, u.is_admin ? "administrator" : "user"), el("td", {}, new Date(u.created_at).toLocaleString()),
      el("td", {},
        el("button", {type: "button", class: "secondary", onclick: () => api("PATCH", `/api/v1/users/${encodeURIComponent(u.username)}`, {is_admin: !u.is_admin}).then(load, fail)},
           u.is_admin ? "Revoke administrator" : "Make administrator"), " ",
        el("button", {type: "button", class: "secondary", "aria-label": `Delete ${u.username}`, onclick: () => confirm(`Delete ${u.username}?`) &&
           api("DELETE", `/api/v1/users/${encodeURIComponent(u.username)}`).then(load, fail)}, "Delete")))));
  }
  document.getElementById("new-user").addEventListener("submit", async ev => {
    ev.preventDefault();
    try {
      await api("POST", "/api/v1/users", {username: document.getElementById("new-username").value,
        password: document.getElementById("new-password").value, is_admin: document.getElementById("new-admin").checked});
      out.replaceChildren(el("span", {class: "ok"}, "Created."));
      ev.target.reset();
      load();
    } catch (e) { fail(e); }
  });
  load();
})();
