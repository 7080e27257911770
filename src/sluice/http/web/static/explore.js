// Reports: a ranked table and chart; every view lives in the URL (bookmark it, share it);
// click an entity to see its sessions.
"use strict";
(() => {
  const {api, el, fmtNum, fmtBytes, fmtMs, frame, query, REPORT_KEYS, keyText} = Sluice;
  const form = document.getElementById("explore");
  const fields = ["entity", "metric", "direction", "time", "filter", "top"];
  const drill = {host: r => `ADDR == ${r.address}`, port: r => `SRVPORT == ${r.port} && PROTO == ${r.protocol}`,
                 country: r => `COUNTRY == ${r.country}`, host_pair: r => `CLNIP == ${r.client} && SRVIP == ${r.server}`,
                 asn: r => `ASN == ${r.asn}`, exporter: r => `EXPORTER == ${r.exporter}`};
  const params = new URLSearchParams(location.search);
  for (const f of fields) if (params.has(f)) form.elements[f].value = params.get(f);
  // Answers can come back out of order (a slow query, then a quick one): only the latest
  // request may draw, or a late answer would replace the report asked for after it.
  let reportAsked = 0, sessionsAsked = 0;

  async function run(push) {
    const mine = ++reportAsked;
    const v = Object.fromEntries(fields.map(f => [f, form.elements[f].value]));
    if (push) history.pushState(null, "", "?" + query(v));
    const err = document.getElementById("explore-error");
    err.textContent = "";
    let rows;
    try {
      rows = await api("GET", "/api/v1/reports?" + query({entity: v.entity, metric: v.metric, direction: v.direction,
        filter: v.filter, top: v.top, ...frame(v.time)}));
    } catch (e) { if (mine === reportAsked) err.textContent = e.message; return; }
    if (mine !== reportAsked) return;
    const keys = REPORT_KEYS[v.entity];
    const max = Math.max(1, ...rows.map(r => r.value));
    const fmt = x => v.metric === "bytes" ? fmtBytes(x) : fmtNum(x);
    document.getElementById("report").replaceChildren(
      el("caption", {}, `Top ${v.entity.replace("_", " ")}s by ${v.metric.replace("_", " ")} (${v.direction}), ${v.time}`),
      el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "#"), keys.map(k => el("th", {scope: "col"}, k)),
                                   el("th", {scope: "col", class: "num"}, v.metric), el("th", {}, ""))),
      el("tbody", {}, rows.map((r, i) => el("tr", {},
        el("td", {}, i + 1),
        keys.map((k, j) => el("td", {}, j === 0 ? el("a", {href: "#sessions", "data-drill": drill[v.entity](r),
          onclick: ev => { ev.preventDefault(); sessions(drill[v.entity](r), v.time); }}, keyText(k, r[k])) : keyText(k, r[k]))),
        el("td", {class: "num"}, fmt(r.value)),
        el("td", {}, el("span", {class: "bar", style: `width:${Math.round(200 * r.value / max)}px`}))))));
    if (!rows.length) document.getElementById("report").append(el("tbody", {}, el("tr", {}, el("td", {}, "Nothing in this time frame."))));
  }

  async function sessions(filter, time) {
    const base = form.elements.filter.value.trim();
    const f = base ? `(${base}) && (${filter})` : filter;
    const mine = ++sessionsAsked;
    let rows;
    try { rows = await api("GET", "/api/v1/sessions?" + query({filter: f, limit: 100, ...frame(time)})); }
    catch (e) { if (mine === sessionsAsked) document.getElementById("explore-error").textContent = e.message; return; }
    if (mine !== sessionsAsked) return;
    const title = document.getElementById("sessions-title");
    title.hidden = false;
    title.textContent = `Sessions where ${f}`;
    const cols = ["start_ms", "cln_addr", "cln_port", "srv_addr", "srv_port", "protocol", "cln_bytes", "srv_bytes", "cln_country", "srv_country"];
    document.getElementById("sessions").replaceChildren(
      el("thead", {}, el("tr", {}, cols.map(c => el("th", {scope: "col"}, c.replace("_ms", ""))))),
      el("tbody", {}, rows.map(r => el("tr", {}, cols.map(c => el("td", {}, c === "start_ms" ? fmtMs(r[c]) : r[c]))))));
    title.scrollIntoView();
  }

  form.addEventListener("submit", ev => { ev.preventDefault(); run(true); });
  window.addEventListener("popstate", () => { const p = new URLSearchParams(location.search); for (const f of fields) if (p.has(f)) form.elements[f].value = p.get(f); run(false); });
  run(false);
})();
