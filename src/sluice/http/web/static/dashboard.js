// The dashboard: widgets the user adds, removes, configures and orders (saved per user),
// and the live alerts stream feeding every Alerts widget.
"use strict";
(() => {
  const {api, el, fmtNum, fmtTime, fmtMs, fmtBytes, frame, SEVERITIES, rank, query, REPORT_KEYS, keyText} = Sluice;
  const box = document.getElementById("widgets");
  const streamState = document.getElementById("stream-state");
  const menu = document.getElementById("menu");
  let layout = {widgets: []};
  const alerts = new Map();  // id -> alert record
  const refreshers = [];     // functions refreshing the data widgets
  const EMPTY_ROWS = 3;

  const TITLES = {alerts: "Alerts", traffic: "Traffic over time", top: "Top list", status: "Server status"};

  // saves go out one after another, each with the layout as it is then: the page's copy is
  // the truth, a slow answer never overwrites a newer change
  let saving = Promise.resolve();
  function save() {
    const snapshot = JSON.parse(JSON.stringify(layout));
    saving = saving.then(() => api("PUT", "/api/v1/dashboard", snapshot))
      .catch(e => alert("The dashboard could not be saved: " + e.message));
    return Promise.resolve();
  }

  function newWidget(type) {
    const id = type + "-" + Date.now().toString(36);
    return {alerts: {type, id, title: "Alerts", min_severity: "INFO"}, traffic: {type, id, metric: "bytes", frame: "-1h"},
            top: {type, id, entity: "host", metric: "bytes", frame: "-15m", top: 10}, status: {type, id}}[type];
  }

  function select(id, label, value, options, onchange) {
    return [el("label", {for: id}, label),
            el("select", {id, onchange: ev => onchange(ev.target.value)},
               options.map(o => el("option", {value: o, selected: o === String(value)}, o)))];
  }

  function render() {
    refreshers.length = 0;
    box.replaceChildren(...layout.widgets.map((w, i) => widget(w, i)));
    refreshers.forEach(f => f());
  }

  function widget(w, i) {
    const title = w.type === "alerts" ? (w.title || "Alerts") : TITLES[w.type];
    const body = el("div", {class: "body"});
    const section = el("section", {class: "widget", "data-widget": w.id, "data-type": w.type,
                                   "aria-labelledby": `${w.id}-title`},
      el("header", {},
        el("h2", {id: `${w.id}-title`}, title),
        el("button", {type: "button", class: "secondary", "aria-label": `Move ${title} up`, disabled: i === 0,
                      onclick: () => move(i, -1)}, "↑"),
        el("button", {type: "button", class: "secondary", "aria-label": `Move ${title} down`,
                      disabled: i === layout.widgets.length - 1, onclick: () => move(i, 1)}, "↓"),
        el("button", {type: "button", class: "secondary", "aria-label": `Remove ${title}`, onclick: () => remove(i)}, "✕")),
      settings(w), body);
    const fill = {alerts: fillAlerts, traffic: fillTraffic, top: fillTop, status: fillStatus}[w.type];
    const refresh = () => fill(w, body).catch(e => body.replaceChildren(el("p", {class: "error"}, e.message)));
    section.refresh = refresh;
    refreshers.push(refresh);
    return section;
  }

  function settings(w) {
    const set = (key, cast = v => v) => v => { w[key] = cast(v); save().then(render); };
    const p = w.id;
    if (w.type === "alerts") {
      return el("div", {class: "settings"},
        el("label", {for: `${p}-name`}, "Title"),
        el("input", {id: `${p}-name`, value: w.title, maxlength: 80, size: 14, onchange: ev => set("title")(ev.target.value)}),
        select(`${p}-sev`, "Minimum severity", w.min_severity, SEVERITIES, set("min_severity")));
    }
    if (w.type === "traffic") {
      return el("div", {class: "settings"}, select(`${p}-metric`, "Metric", w.metric, ["bytes", "packets", "sessions"], set("metric")),
        select(`${p}-frame`, "Time frame", w.frame, ["-15m", "-1h", "-6h", "-1d", "-7d"], set("frame")));
    }
    if (w.type === "top") {
      return el("div", {class: "settings"},
        select(`${p}-entity`, "Top", w.entity, ["host", "port", "country", "host_pair", "asn"], set("entity")),
        select(`${p}-metric`, "by", w.metric, ["bytes", "packets", "sessions", "unique_hosts", "unique_ports"], set("metric")),
        select(`${p}-frame`, "over", w.frame, ["-5m", "-15m", "-1h", "-6h", "-1d", "-7d"], set("frame")));
    }
    return el("div", {class: "settings"});
  }

  function move(i, d) {
    const ws = layout.widgets;
    [ws[i], ws[i + d]] = [ws[i + d], ws[i]];
    save().then(render);
  }

  function remove(i) {
    layout.widgets.splice(i, 1);
    save().then(render);
  }

  // -- alerts -----------------------------------------------------------------------------

  async function fillAlerts(w, body) {
    const rows = [...alerts.values()].filter(a => rank(a.severity) >= rank(w.min_severity))
      .sort((a, b) => b.last_trigger_us - a.last_trigger_us || b.id - a.id);
    const head = el("tr", {}, ["Severity", "Entity", "Message", "COUNT", "Threshold", "Last trigger", "State", ""]
      .map((h, k) => el("th", {scope: "col", class: k === 3 || k === 4 ? "num" : null}, h)));
    const trs = rows.map(a => el("tr", {"data-alert": a.id, class: a.state === "ACKNOWLEDGED" ? "acked" : null},
      el("td", {}, el("span", {class: `sev sev-${a.severity}`}, a.severity)),
      el("td", {}, a.entity), el("td", {class: "msg"}, a.message),
      el("td", {class: "num"}, fmtNum(a.v1)), el("td", {class: "num"}, fmtNum(a.v2)),
      el("td", {}, fmtTime(a.last_trigger_us)), el("td", {class: "state"}, a.state),
      el("td", {}, a.state === "ACKNOWLEDGED" ? "" :
        el("button", {type: "button", "aria-label": `Acknowledge alert ${a.id}`, onclick: () => acknowledge(a.id)}, "Acknowledge"))));
    const empties = Array.from({length: Math.max(EMPTY_ROWS - rows.length, 1)}, () =>
      el("tr", {class: "empty", tabindex: 0, title: "Right-click (or press Enter) for a menu",
                oncontextmenu: ev => { ev.preventDefault(); openMenu(ev.clientX, ev.clientY); },
                onkeydown: ev => {
                  if (ev.key !== "Enter" && ev.key !== "ContextMenu") return;
                  ev.preventDefault();  // or the same key press would activate the menu item it focuses
                  const r = ev.target.getBoundingClientRect();
                  openMenu(r.left + 20, r.bottom);
                }},
        el("td", {colspan: 8}, rows.length ? "" : "No alerts yet.")));
    const open = rows.filter(a => a.state !== "ACKNOWLEDGED").length;
    const place = focusPlace(body);
    // many alerts scroll inside the widget (its head stays), and the count says how many
    body.replaceChildren(
      el("p", {class: "muted alerts-count"}, `${fmtNum(rows.length)} alert${rows.length === 1 ? "" : "s"}, ${fmtNum(open)} not acknowledged`),
      el("div", {class: "alerts-scroll"}, el("table", {}, el("thead", {}, head), el("tbody", {}, trs, empties))),
      el("p", {}, el("a", {href: "/alerts/new"}, "Schedule new alert…")));
    restoreFocus(body, place);
  }

  // A live update redraws the table: the keyboard focus, if it was in it, goes back to the
  // same place (the same empty row, or the same alert's button), not to the page's start.
  function focusPlace(body) {
    const focused = body.contains(document.activeElement) ? document.activeElement : null;
    const row = focused && focused.closest("tr");
    if (!row) return null;
    if (row.classList.contains("empty")) return {empty: [...body.querySelectorAll("tr.empty")].indexOf(row)};
    return row.dataset.alert ? {alert: row.dataset.alert} : null;
  }

  function restoreFocus(body, place) {
    if (!place) return;
    if (place.empty !== undefined) {
      const empties = body.querySelectorAll("tr.empty");
      empties[Math.min(place.empty, empties.length - 1)]?.focus();
    } else {
      body.querySelector(`tr[data-alert="${place.alert}"] button`)?.focus();
    }
  }

  async function acknowledge(id) {
    try {
      await api("POST", "/api/v1/alerts/acknowledge", {ids: [id]});
      const a = alerts.get(id);
      if (a) { a.state = "ACKNOWLEDGED"; redrawAlerts(); }
    } catch (e) { alert("Not acknowledged: " + e.message); }
  }

  function redrawAlerts() {
    for (const section of box.querySelectorAll('section[data-type="alerts"]')) section.refresh();
  }

  function openMenu(x, y) {
    menu.style.left = x + "px";
    menu.style.top = y + "px";
    menu.hidden = false;
    document.getElementById("menu-new").focus();
  }
  document.getElementById("menu-new").addEventListener("click", () => { location.href = "/alerts/new"; });
  document.addEventListener("click", ev => { if (!menu.contains(ev.target)) menu.hidden = true; });
  document.addEventListener("keydown", ev => { if (ev.key === "Escape") menu.hidden = true; });

  function connectStream() {
    const source = new EventSource("/api/v1/alerts/stream");
    source.addEventListener("open", () => { streamState.textContent = "Live"; });
    source.addEventListener("error", () => { streamState.textContent = "Reconnecting…"; });
    source.addEventListener("alert", ev => {
      const {change, alert: a} = JSON.parse(ev.data);
      if (change === "deleted") alerts.delete(a.id);
      else alerts.set(a.id, {...(alerts.get(a.id) || {}), ...a, v1: a.v1, v2: a.v2});
      redrawAlerts();
    });
  }

  // -- data widgets -------------------------------------------------------------------------

  async function fillTraffic(w, body) {
    const f = frame(w.frame);
    const data = await api("GET", "/api/v1/timeseries?" + query({metric: w.metric, ...f}));
    const xs = data.points.map(p => p.bucket_ms / 1000);
    const ys = data.points.map(p => p.value / (data.bucket_ms / 1000));
    const target = el("div", {class: "chart", role: "img",
      "aria-label": `${w.metric} per second over ${w.frame}: ${data.points.length} points`});
    body.replaceChildren(target);
    if (!xs.length) { target.textContent = "No traffic in this time frame."; return; }
    const width = Math.max(300, body.clientWidth || 520);
    new uPlot({width, height: 220, scales: {x: {time: true, range: [f.start_ms / 1000, f.end_ms / 1000]}},
               series: [{}, {label: `${w.metric}/s`, stroke: "#0b5cad", fill: "rgba(11,92,173,.12)"}],
               axes: [{}, {size: 70, values: (u, v) => v.map(x => w.metric === "bytes" ? fmtBytes(x) : fmtNum(Math.round(x)))}]},
              [xs, ys], target);
  }

  async function fillTop(w, body) {
    const rows = await api("GET", "/api/v1/reports?" + query({entity: w.entity, metric: w.metric, top: w.top, ...frame(w.frame)}));
    const keys = REPORT_KEYS[w.entity];
    const max = Math.max(1, ...rows.map(r => r.value));
    body.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, keys.map(k => el("th", {scope: "col"}, k)), el("th", {scope: "col", class: "num"}, w.metric), el("th", {}, ""))),
      el("tbody", {}, rows.map(r => el("tr", {},
        keys.map(k => el("td", {}, keyText(k, r[k]))),
        el("td", {class: "num"}, w.metric === "bytes" ? fmtBytes(r.value) : fmtNum(r.value)),
        el("td", {}, el("span", {class: "bar", style: `width:${Math.round(120 * r.value / max)}px`})))))),
      el("p", {}, el("a", {href: "/explore?" + query({entity: w.entity, metric: w.metric, time: w.frame})}, "Explore…")));
  }

  async function fillStatus(w, body) {
    const [s, exporters] = await Promise.all([api("GET", "/api/v1/status"), api("GET", "/api/v1/exporters")]);
    const st = s.storage || {};
    const dl = (pairs) => el("table", {}, el("tbody", {}, pairs.map(([k, v]) => el("tr", {}, el("th", {scope: "row"}, k), el("td", {class: "num"}, v)))));
    body.replaceChildren(
      dl([["Flow rate", fmtNum(s.flows_per_second) + " flows/s"], ["Flows", fmtNum(s.flows)], ["Datagrams", fmtNum(s.datagrams)],
          ["Decode errors", fmtNum(s.decode_errors)], ["Socket drops", fmtNum(s.socket_drops)],
          ["Overload", s.overload.overloaded ? `about ${fmtNum(s.overload.flows_lost_per_second)} flows/s lost` : "none"],
          ["Live sessions", fmtNum(s.sessions_live)],
          ["Stored session rows", fmtNum(st.rows || 0)], ["Storage size", fmtBytes(st.bytes_on_disk || 0)],
          ["Oldest data", st.oldest_ms ? fmtMs(st.oldest_ms) : "—"],
          ["Retention", s.retention_days ? `${s.retention_days} days` : "—"]]),
      el("h3", {}, "Exporters"),
      el("table", {}, el("thead", {}, el("tr", {}, ["Exporter", "Protocol", "Flows", "Last datagram", "Loss (sequence gaps)"]
          .map(h => el("th", {scope: "col"}, h)))),
        el("tbody", {}, exporters.map(e => el("tr", {}, el("td", {}, e.exporter), el("td", {}, e.protocol), el("td", {class: "num"}, fmtNum(e.flows)),
          el("td", {}, e.last_datagram_ms ? fmtMs(e.last_datagram_ms) : "—"), el("td", {class: "num"}, fmtNum(e.sequence_gaps)))))));
  }

  // the server sheds load when it cannot keep up: say so above every widget, whatever the layout
  async function checkOverload() {
    const banner = document.getElementById("overload");
    try {
      const o = (await api("GET", "/api/v1/status")).overload;
      banner.textContent = o.message;
      banner.hidden = !o.overloaded;
    } catch (e) { /* the next check tries again */ }
  }

  // -- start --------------------------------------------------------------------------------

  document.getElementById("add-widget").addEventListener("click", () => {
    layout.widgets.push(newWidget(document.getElementById("add-type").value));
    save().then(render);
  });

  (async () => {
    layout = await api("GET", "/api/v1/dashboard");
    connectStream();  // first: what changes while the list loads arrives on the stream
    for (const a of await api("GET", "/api/v1/alerts?limit=500")) if (!alerts.has(a.id)) alerts.set(a.id, a);
    render();
    document.getElementById("add-widget").disabled = false;  // only once the saved layout is in
    setInterval(() => box.querySelectorAll('section:not([data-type="alerts"])').forEach(s => s.refresh()), 15000);
    checkOverload();
    setInterval(checkOverload, 5000);
  })();
})();
