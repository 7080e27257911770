// Shared helpers of the Sluice pages: the API (with the CSRF token of the web login),
// safe DOM building (text, never HTML, from data), formatting.
"use strict";
const Sluice = (() => {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  class ApiError extends Error {
    constructor(status, data) { super(detailText(data)); this.status = status; this.data = data; }
  }

  function detailText(data) {
    const d = data && data.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map(x => (x.loc ? x.loc[x.loc.length - 1] + ": " : "") + x.msg).join("; ");
    return "the request failed";
  }

  async function api(method, path, body) {
    const opts = {method, headers: {}, credentials: "same-origin"};
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    const r = await fetch(path, opts);
    if (r.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new ApiError(401, {detail: "log in again"});
    }
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  // el("td", {class: "x", onclick: f}, "text", child) - children are text or nodes
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fmtNum = n => Number(n).toLocaleString("en-US");
  const fmtTime = us => new Date(us / 1000).toLocaleString();
  const fmtMs = ms => new Date(ms).toLocaleString();
  function fmtBytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0; n = Number(n);
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  const UNIT_MS = {m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3};
  function frame(text) {
    const m = /^-?(\d+)([mhdw])$/.exec(text || "-15m");
    const end = Date.now() + 1;
    return {start_ms: end - Number(m[1]) * UNIT_MS[m[2]], end_ms: end};
  }
  const SEVERITIES = ["INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"];
  const rank = s => SEVERITIES.indexOf(s);
  // the key columns of a report row, per entity (the value column is "value")
  const REPORT_KEYS = {host: ["address"], port: ["protocol", "port"], country: ["country"], host_pair: ["client", "server"],
                       asn: ["asn"], exporter: ["exporter"]};
  const protoName = p => ({1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmp6", 132: "sctp"})[p] || String(p);
  // a report row's key cell as shown (protocol numbers by name)
  const keyText = (k, v) => k === "protocol" ? protoName(v) : v;
  const query = params => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")).toString();

  const logout = document.getElementById("logout");
  if (logout) logout.addEventListener("click", async () => {
    try { await api("POST", "/api/v1/logout"); } finally { location.href = "/login"; }
  });

  return {api, el, fmtNum, fmtTime, fmtMs, fmtBytes, frame, SEVERITIES, rank, query, REPORT_KEYS, protoName, keyText, ApiError};
})();
