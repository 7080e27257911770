// Preferences: the E-mail tab (SMTP for administrators; everyone's own To:), Syslog, Webhook.
// Saving with a To: sends a test mail; its fate is shown. Below, the user's API tokens.
"use strict";
(() => {
  const {api, el} = Sluice;
  const $ = k => document.getElementById(k);
  const IS_ADMIN = $("prefs").dataset.isAdmin === "true";
  const tabs = ["email", "syslog", "webhook"];
  function show(name) {
    for (const t of tabs) {
      const on = t === name;
      $(`tab-${t}`).setAttribute("aria-selected", on);
      $(`tab-${t}`).tabIndex = on ? 0 : -1;
      $(`panel-${t}`).hidden = !on;
    }
  }
  tabs.forEach((t, i) => {
    $(`tab-${t}`).addEventListener("click", () => show(t));
    $(`tab-${t}`).addEventListener("keydown", ev => {
      const d = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
      if (d) { const n = tabs[(i + d + tabs.length) % tabs.length]; show(n); $(`tab-${n}`).focus(); }
    });
  });

  const USER_KEYS = ["email_to", "syslog_host", "syslog_port", "syslog_facility", "syslog_format", "syslog_transport", "webhook_url"];
  const SYSTEM_KEYS = ["smtp_host", "smtp_port", "smtp_security", "smtp_username", "smtp_from"];

  (async () => {
    const p = await api("GET", "/api/v1/preferences");
    for (const k of USER_KEYS) $(k).value = p[k];
    $("email_digest").checked = p.email_digest;
    if (p.webhook_secret_set) $("webhook_secret").placeholder = "set (unchanged)";
    if (IS_ADMIN) {
      const s = await api("GET", "/api/v1/settings");
      for (const k of SYSTEM_KEYS) $(k).value = s[k];
      if (s.smtp_password_set) $("smtp_password").placeholder = "set (unchanged)";
    }
    // the form opens only once the saved values are in it
    $("prefs-fields").disabled = false;
    $("prefs-loading").hidden = true;
    $("prefs-save").disabled = false;
  })();

  function testMail(t) {
    if (!t) return [];
    return t.sent ? [el("span", {class: "ok"}, ` A test mail went to ${t.to}.`)]
                  : [el("span", {class: "error"}, ` The test mail failed: ${t.error}`)];
  }

  // API tokens: list, make (shown once), revoke
  const when = t => t ? new Date(t).toLocaleString() : "";
  async function listTokens() {
    const rows = await api("GET", "/api/v1/tokens");
    $("tokens").tBodies[0].replaceChildren(...(rows.length ? rows.map(t => el("tr", {},
      el("td", {}, t.name), el("td", {}, when(t.created_at)),
      el("td", {class: t.expired ? "error" : null}, t.expires_at ? when(t.expires_at) + (t.expired ? " (expired)" : "") : "never"),
      el("td", {}, when(t.last_used_at) || "never"),
      el("td", {}, el("button", {type: "button", "aria-label": `Revoke ${t.name}`, onclick: async () => {
        try { await api("DELETE", `/api/v1/tokens/${t.id}`); $("token-result").replaceChildren(el("span", {class: "ok"}, `Revoked ${t.name}.`)); }
        catch (e) { $("token-result").replaceChildren(el("span", {class: "error"}, "Not revoked: " + e.message)); }
        listTokens();
      }}, "Revoke"))))
      : [el("tr", {}, el("td", {colspan: 5, class: "muted"}, "No tokens."))]));
  }
  listTokens();
  $("token-new").addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = $("token-result");
    try {
      const body = {name: $("token_name").value};
      if ($("token_days").value) body.expires_in_days = Number($("token_days").value);
      const made = await api("POST", "/api/v1/tokens", body);
      out.replaceChildren(el("span", {class: "ok"}, "Your new token (copy it now: it is not shown again): "),
                          el("code", {id: "token-value"}, made.token));
      listTokens();
    } catch (e) {
      out.replaceChildren(el("span", {class: "error"}, "No token made: " + e.message));
    }
  });

  $("prefs").addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = $("prefs-result");
    out.replaceChildren();
    try {
      const parts = [];
      if (IS_ADMIN) {
        const body = Object.fromEntries(SYSTEM_KEYS.map(k => [k, $(k).value]));
        body.smtp_port = Number(body.smtp_port);
        if ($("smtp_password").value) body.smtp_password = $("smtp_password").value;
        await api("PUT", "/api/v1/settings", body);
      }
      const body = Object.fromEntries(USER_KEYS.map(k => [k, $(k).value]));
      body.syslog_port = Number(body.syslog_port);
      body.email_digest = $("email_digest").checked;
      if ($("webhook_secret").value) body.webhook_secret = $("webhook_secret").value;
      const saved = await api("PUT", "/api/v1/preferences", body);
      parts.push(el("span", {class: "ok"}, "Saved."), ...testMail(saved.test_mail));
      out.replaceChildren(...parts);
    } catch (e) {
      out.replaceChildren(el("span", {class: "error"}, "Not saved: " + e.message));
    }
  });
})();
