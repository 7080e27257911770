// The alert editor: FlowTraq's sentence, the prefilter checked live by the server's parser.
"use strict";
(() => {
  const {api, el} = Sluice;
  const form = document.getElementById("editor");
  const id = form.dataset.definition;
  const $ = k => document.getElementById(k);
  const list = text => text.split(/[,\s]+/).map(s => s.trim()).filter(Boolean);
  const status = $("prefilter-status");
  let timer = null;

  async function checkPrefilter() {
    const text = $("prefilter").value;
    const r = await api("GET", "/api/v1/filter/check?filter=" + encodeURIComponent(text));
    if ($("prefilter").value !== text) return;  // a late answer about text since changed
    status.replaceChildren(r.ok ? el("span", {class: "ok"}, text.trim() ? "✓ valid filter" : "")
                                : el("pre", {class: "pointer error"}, r.pointer));
    $("prefilter").setAttribute("aria-invalid", r.ok ? "false" : "true");
  }
  $("prefilter").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(checkPrefilter, 250); });

  // "for any one host exceeds" / "for the watched host(s) falls below"
  const sentence = () => { $("which-entities").textContent = $("threshold-type").value === "lower" ? "the watched" : "any one"; };
  $("threshold-type").addEventListener("change", sentence);

  function body() {
    return {
      title: $("title").value, description: $("description").value, prefilter: $("prefilter").value,
      metric: $("metric").value, entity: $("entity").value, threshold: Number($("threshold").value),
      per_second: $("per-second").value === "1",
      threshold_type: $("threshold-type").value,
      min_volume: Number($("min-volume").value), baseline_days: Number($("baseline-days").value),
      watch: $("watch").value.split(",").map(s => s.trim()).filter(Boolean),  // a pair: "a -> b"
      interval: $("interval").value, severity: $("severity").value, enabled: $("enabled").checked,
      renotify: $("renotify").value || null,
      exceptions: {addresses: list($("except-addresses").value), ports: list($("except-ports").value).map(Number),
                   countries: list($("except-countries").value),
                   thresholds: list($("thresholds").value).map(t => { const [cidr, n] = t.split("="); return {cidr, threshold: Number(n)}; })},
    };
  }

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const out = $("editor-result");
    try {
      const d = await api(id ? "PUT" : "POST", id ? `/api/v1/alert-definitions/${id}` : "/api/v1/alert-definitions", body());
      out.replaceChildren(el("span", {class: "ok"}, `Saved: alert definition ${d.id}.`), " ", el("a", {href: "/alerts"}, "All definitions"));
    } catch (e) {
      out.replaceChildren(el("span", {class: "error"}, "Not saved: " + e.message));
    }
  });

  if (id) (async () => {
    const d = await api("GET", `/api/v1/alert-definitions/${id}`);
    for (const k of ["title", "description", "prefilter", "metric", "entity", "threshold", "interval", "severity"]) $(k).value = d[k];
    $("enabled").checked = d.enabled;
    $("per-second").value = d.per_second ? "1" : "";
    $("threshold-type").value = d.threshold_type;
    $("min-volume").value = d.min_volume;
    $("baseline-days").value = d.baseline_days;
    sentence();
    $("watch").value = d.watch.join(", ");
    if (d.status === "failed") {  // set aside by the server: say why, so that it can be fixed
      $("definition-failed").textContent = "This definition is not being evaluated: " + d.error;
      $("definition-failed").hidden = false;
    }
    $("renotify").value = d.renotify || "";
    $("except-addresses").value = d.exceptions.addresses.join(", ");
    $("except-ports").value = d.exceptions.ports.join(", ");
    $("except-countries").value = d.exceptions.countries.join(", ");
    $("thresholds").value = d.exceptions.thresholds.map(t => `${t.cidr}=${t.threshold}`).join(", ");
    $("editor-save").disabled = false;
  })();
  else $("editor-save").disabled = false;
})();
