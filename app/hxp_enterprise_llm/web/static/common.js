"use strict";
// Shared by chat.js and dashboard.js: the page's settings (/ui/config.json) and the API key.
// The key lives in this tab's sessionStorage and goes nowhere but this service's Authorization header.

window.HXP = (() => {
  const KEY_STORAGE = "hxp-llm-api-key";
  let settingsPromise = null;

  function settings() {
    if (settingsPromise === null) {
      settingsPromise = fetch("config.json", { cache: "no-store" }).then((r) => {
        if (!r.ok) throw new Error(`config.json: HTTP ${r.status}`);
        return r.json();
      });
    }
    return settingsPromise;
  }

  const apiKey = () => sessionStorage.getItem(KEY_STORAGE);

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function askForKey(message) {
    const dialog = document.getElementById("key-dialog");
    const error = document.getElementById("key-error");
    error.hidden = !message;
    error.textContent = message || "";
    if (!dialog.open) dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        const value = document.getElementById("key-input").value.trim();
        if (value) sessionStorage.setItem(KEY_STORAGE, value);
        document.getElementById("forget-key").hidden = !apiKey();
        resolve(apiKey());
      }, { once: true });
    });
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORAGE);
    document.getElementById("key-input").value = "";
    document.getElementById("forget-key").hidden = true;
  }

  // API paths are absolute: the page lives under /ui/, the API at the root of the same origin.
  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}), ...authHeaders() };
    return fetch(path, { ...options, headers });
  }

  function formatMs(value) {
    if (value === null || value === undefined) return "–";
    return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
  }

  document.addEventListener("DOMContentLoaded", async () => {
    document.getElementById("forget-key").addEventListener("click", forgetKey);
    const s = await settings();
    document.getElementById("model-name").textContent = s.model;
    document.getElementById("forget-key").hidden = !apiKey();
    if (s.api_key_required && !apiKey()) await askForKey();
  });

  return { settings, api, apiKey, askForKey, formatMs };
})();
