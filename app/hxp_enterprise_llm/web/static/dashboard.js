"use strict";
// The live dashboard: /metrics/streaming (the service's sliding window) and /health, every
// `refresh_seconds` (the service's metrics_collection_interval), and right after each chat answer.

(() => {
  const HISTORY = 60; // points kept for the sparklines
  const series = { tokens: [], ttft: [] };
  const $ = (id) => document.getElementById(id);

  const pair = (summary) => (summary && summary.p50_ms !== null
    ? `${HXP.formatMs(summary.p50_ms)} / ${HXP.formatMs(summary.p95_ms)}` : "–");

  function spark(id, values) {
    const line = $(id).querySelector("polyline");
    const numbers = values.map((v) => (v === null ? 0 : v));
    const top = Math.max(...numbers, 1e-9);
    const step = numbers.length > 1 ? 100 / (numbers.length - 1) : 0;
    line.setAttribute("points", numbers.map((v, i) => `${(i * step).toFixed(1)},${(23 - (v / top) * 22).toFixed(1)}`)
      .join(" "));
  }

  function remember(name, value) {
    series[name].push(value);
    if (series[name].length > HISTORY) series[name].shift();
  }

  function showHealth(health) {
    const state = health.status === "healthy" ? "ready" : health.status;
    $("state-badge").dataset.state = state;
    $("state-badge").textContent = state;
    $("dash-state").textContent = state;
    $("dash-load").textContent = health.running === undefined ? "–" : `${health.running} / ${health.waiting}`;
  }

  function showStreaming(m) {
    $("dash-active-streams").textContent = String(m.active_streams);
    $("dash-tokens-per-second").textContent = m.tokens_per_second.toFixed(1);
    $("dash-ttft").textContent = pair(m.time_to_first_token);
    $("dash-itl").textContent = pair(m.inter_token_latency);
    $("dash-e2e").textContent = pair(m.e2e_latency);
    const slo = m.slo;
    $("dash-slo").textContent = slo.attainment === null ? "–" : `${(slo.attainment * 100).toFixed(1)} %`;
    $("dash-slo-detail").textContent = `${slo.met} of ${slo.requests} within ${HXP.formatMs(slo.target_latency_ms)}`;
    const cache = m.prompt_cache;
    $("dash-cache").textContent = cache.hit_rate === null ? "–" : `${(cache.hit_rate * 100).toFixed(1)} %`;
    $("dash-cache-detail").textContent = `${cache.cached_tokens} of ${cache.prompt_tokens} prompt tokens cached`;
    $("dash-window").textContent = `Streams finished in the last ${Math.round(m.window_seconds / 60)} min: `
      + `${m.streams_completed} (${m.streams_completed_total} since start), ${m.chunks_per_second.toFixed(1)} frames/s.`;
    remember("tokens", m.tokens_per_second);
    remember("ttft", m.time_to_first_token.p95_ms);
    spark("spark-tokens", series.tokens);
    spark("spark-ttft", series.ttft);
  }

  const sum = (counts) => Object.values(counts || {}).reduce((a, b) => a + b, 0);

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
  }

  // Per key name (/metrics/keys, the counters Prometheus scrapes): usage since start, refusals, quota left.
  function showKeys(body) {
    const tbody = $("dash-keys").tBodies[0];
    tbody.replaceChildren();
    for (const k of body.keys) {
      const row = tbody.insertRow();
      const refused = Object.entries(k.refusals).map(([reason, n]) => `${reason} ${n}`).join(", ");
      const left = Object.entries(k.limits || {}).map(([kind, s]) => `${s.remaining}/${s.limit} ${kind}`).join(", ");
      cell(row, k.key);
      cell(row, k.priority || "–");
      cell(row, `${sum(k.requests)} (${k.requests.ok || 0})`);
      cell(row, `${k.prompt_tokens} / ${k.cached_tokens} / ${k.completion_tokens}`);
      cell(row, refused || "0", refused ? "refused" : "");
      cell(row, left || "no limit");
    }
    $("dash-keys-note").textContent = "";
  }

  function refreshKeys() {
    HXP.api("/metrics/keys").then((r) => {
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      return r.json();
    }).then(showKeys).catch((error) => {
      $("dash-keys-note").textContent = `per-key usage unavailable: ${error.message}`;
    });
  }

  async function refresh() {
    refreshKeys();
    try {
      const [health, streaming] = await Promise.all([
        HXP.api("/health").then((r) => r.json()),
        HXP.api("/metrics/streaming").then((r) => {
          if (!r.ok) throw new Error(`/metrics/streaming: HTTP ${r.status}`);
          return r.json();
        }),
      ]);
      showHealth(health);
      showStreaming(streaming);
      $("dash-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("dash-updated").classList.remove("stale");
    } catch (error) {
      $("state-badge").dataset.state = "unreachable";
      $("state-badge").textContent = "unreachable";
      $("dash-updated").textContent = `update failed: ${error.message}`;
      $("dash-updated").classList.add("stale");
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const settings = await HXP.settings();
    refresh();
    setInterval(refresh, Math.max(1, settings.refresh_seconds) * 1000);
    document.addEventListener("hxp:answer-finished", refresh);
  });
})();
