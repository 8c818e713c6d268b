"use strict";
// The chat playground: streams /v1/chat/completions (SSE) into the transcript as frames arrive.
// Stop aborts the fetch; the server sees the client leave and aborts the engine request.

(() => {
  const history = []; // {role, content} of finished turns, sent with every request
  let inFlight = null; // AbortController of the answer being streamed

  const $ = (id) => document.getElementById(id);

  function addMessage(role, text) {
    const node = document.createElement("div");
    node.className = `msg ${role}`;
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    const meta = document.createElement("div");
    meta.className = "meta";
    node.append(content, meta);
    $("transcript").append(node);
    node.scrollIntoView({ block: "end" });
    return { node, content, meta };
  }

  function requestBody(messages) {
    const body = {
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number($("temperature").value),
      top_p: Number($("top-p").value),
      max_tokens: Number($("max-tokens").value),
    };
    return body;
  }

  // Server-sent events: frames separated by a blank line, payload on `data:` lines, `:` lines are pings.
  async function* sseData(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart()).join("\n");
        if (data) yield data;
      }
    }
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      const retry = response.headers.get("Retry-After");
      return `${response.status} ${body.error.message}${retry ? ` (retry after ${retry} s)` : ""}`;
    } catch (_) {
      return `HTTP ${response.status}`;
    }
  }

  function describe(stats) {
    const parts = [];
    if (stats.ttftMs !== null) parts.push(`TTFT ${HXP.formatMs(stats.ttftMs)}`);
    if (stats.usage) {
      parts.push(`${stats.usage.prompt_tokens} prompt + ${stats.usage.completion_tokens} completion tokens`);
      const decodeSeconds = (stats.totalMs - stats.ttftMs) / 1000;
      if (stats.usage.completion_tokens > 1 && decodeSeconds > 0) {
        parts.push(`${((stats.usage.completion_tokens - 1) / decodeSeconds).toFixed(1)} tok/s`);
      }
    } else if (stats.frames) {
      parts.push(`${stats.frames} frame${stats.frames === 1 ? "" : "s"}`);
    }
    parts.push(`total ${HXP.formatMs(stats.totalMs)}`);
    if (stats.finish) parts.push(`finish: ${stats.finish}`);
    return parts.join(" · ");
  }

  async function send(prompt) {
    const settings = await HXP.settings();
    const messages = [];
    const system = $("system-prompt").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history, { role: "user", content: prompt });

    addMessage("user", prompt);
    const answer = addMessage("assistant", "");
    answer.node.dataset.state = "waiting";
    answer.node.dataset.frames = "0";
    const stats = { ttftMs: null, totalMs: 0, usage: null, finish: null, frames: 0 };
    const started = performance.now();
    inFlight = new AbortController();
    setBusy(true);
    try {
      const response = await HXP.api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: settings.model, ...requestBody(messages) }),
        signal: inFlight.signal,
      });
      if (response.status === 401) {
        answer.node.dataset.state = "error";
        answer.meta.textContent = await errorText(response);
        await HXP.askForKey("The service refused the key: enter it again.");
        return;
      }
      if (!response.ok) {
        answer.node.dataset.state = "error";
        answer.meta.textContent = await errorText(response);
        return;
      }
      answer.node.dataset.state = "streaming";
      for await (const data of sseData(response)) {
        if (data === "[DONE]") break;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message || "stream error");
        for (const choice of event.choices || []) {
          const text = (choice.delta && choice.delta.content) || "";
          if (text) {
            if (stats.ttftMs === null) stats.ttftMs = performance.now() - started;
            answer.content.textContent += text;
            stats.frames += 1;
            answer.node.dataset.frames = String(stats.frames);
            answer.node.scrollIntoView({ block: "end" });
          }
          if (choice.finish_reason) stats.finish = choice.finish_reason;
        }
        if (event.usage) stats.usage = event.usage;
        stats.totalMs = performance.now() - started;
        answer.meta.textContent = describe(stats);
      }
      answer.node.dataset.state = "done";
    } catch (error) {
      stats.totalMs = performance.now() - started;
      if (error.name === "AbortError") {
        answer.node.dataset.state = "stopped";
        stats.finish = "stopped by you";
      } else {
        answer.node.dataset.state = "error";
        stats.finish = `error: ${error.message}`;
      }
    } finally {
      inFlight = null;
      setBusy(false);
      if (answer.node.dataset.state !== "error" || stats.frames) {
        answer.meta.textContent = describe(stats);
      }
      if (answer.content.textContent) {
        history.push({ role: "user", content: prompt }, { role: "assistant", content: answer.content.textContent });
      }
      document.dispatchEvent(new CustomEvent("hxp:answer-finished"));
    }
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const prompt = $("prompt").value.trim();
      if (!prompt || inFlight) return;
      $("prompt").value = "";
      send(prompt);
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => inFlight && inFlight.abort());
    $("clear").addEventListener("click", () => {
      if (inFlight) inFlight.abort();
      history.length = 0;
      $("transcript").replaceChildren();
    });
  });
})();
