// The alert definitions page: the list, with enable/disable and delete.
"use strict";
(async () => {
  const {api, el, fmtNum} = Sluice;
  const tbody = document.querySelector("#definitions tbody");
  // what evaluating a definition has cost since the server started: which definitions a busy
  // server's alerting goes to (milliseconds show for a quiet one)
  const cpu = s => s < 1 ? s.toFixed(3) : s < 100 ? s.toFixed(1) : fmtNum(Math.round(s));
  async function load() {
    const defs = await api("GET", "/api/v1/alert-definitions");
    tbody.replaceChildren(...defs.map(d => el("tr", {"data-definition": d.id},
      el("td", {}, d.id), el("td", {}, d.title),
      el("td", {}, `${d.metric.replace("_", " ")} for ` +
        (d.threshold_type === "lower" ? `${d.entity.replace("_", " ")} ${d.watch.join(", ")} falls below`
                                      : `any one ${d.entity.replace("_", " ")} exceeds`) +
        (d.threshold_type === "baseline" ? ` ${fmtNum(d.threshold)} times its usual value (and ${fmtNum(d.min_volume)})`
                                         : ` ${fmtNum(d.threshold)}${d.per_second ? " per second" : ""}`) +
        ` over ${d.interval}` + (d.prefilter ? ` where ${d.prefilter}` : "")),
      el("td", {}, el("span", {class: `sev sev-${d.severity}`}, d.severity)), el("td", {}, d.status === "failed" ? el("span", {class: "error", title: d.error}, "failed: " + d.error)
                                          : (d.enabled ? "yes" : "no")),
      el("td", {}, `${fmtNum(d.active_entities)} entities, ${fmtNum(Math.round(d.state_bytes / 1024))} kB`
        + (d.spread_steps ? ` (oldest ${fmtNum(d.spread_steps)} steps approximate: over its memory budget)` : "")
        + `, ${cpu(d.cpu_seconds)} s of CPU`),
      el("td", {}, el("a", {href: `/alerts/${d.id}/edit`}, "Edit"), " ",
        el("button", {type: "button", class: "secondary", "aria-label": `Delete alert definition ${d.id}`, onclick: async () => {
          if (confirm(`Delete "${d.title}" and its alerts?`)) { await api("DELETE", `/api/v1/alert-definitions/${d.id}`); load(); }
        }}, "Delete")))));
    if (!defs.length) tbody.replaceChildren(el("tr", {}, el("td", {colspan: 7}, "No alert definitions yet.")));
  }
  load();
})();
