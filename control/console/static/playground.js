// The playground: sends the conversation to /console/playground/chat (the session's cookie and
// CSRF header; the browser never holds an API key) and shows the answer as its SSE arrives.
(() => {
  const form = document.getElementById("playground");
  if (!form) return;
  const transcript = document.getElementById("transcript");
  const input = document.getElementById("f-message");
  const error = document.getElementById("e-message");
  const button = form.querySelector("button[type=submit]");
  const history = [];

  const fill = (template, values) => template.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));

  function turn(who, text) {
    const item = document.createElement("li");
    item.className = "turn " + who;
    const label = document.createElement("strong");
    label.textContent = form.dataset[who === "user" ? "you" : "assistant"];
    const body = document.createElement("p");
    body.className = "content";
    body.textContent = text;
    item.append(label, body);
    transcript.append(item);
    return item;
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = !message;
    input.setAttribute("aria-invalid", message ? "true" : "false");
  }

  // One SSE event (the lines between blank lines): text deltas, an error, or our cost event.
  function handle(event, answer, reply) {
    let kind = "message";
    const data = [];
    for (const line of event.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    const text = data.join("\n");
    if (!text || text === "[DONE]") return;
    let value;
    try { value = JSON.parse(text); } catch { return; }
    if (kind === "cost") {
      const cost = document.createElement("p");
      cost.className = "cost hint";
      cost.textContent = fill(form.dataset.cost, {
        prompt: value.prompt_tokens, completion: value.completion_tokens, credits: value.credits });
      answer.append(cost);
    } else if (value.error) {
      showError(fill(form.dataset.failed, { message: value.error.message }));
    } else {
      const delta = value.choices && value.choices[0] && value.choices[0].delta;
      if (delta && delta.content) {
        reply.text += delta.content;
        answer.querySelector(".content").textContent = reply.text;
      }
    }
  }

  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    const message = input.value.trim();
    if (!message) { showError(form.dataset.empty); return; }
    showError("");
    history.push({ role: "user", content: message });
    turn("user", message);
    input.value = "";
    const answer = turn("assistant", "");
    answer.setAttribute("aria-busy", "true");
    const reply = { text: "" };
    button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: JSON.stringify({ model: form.elements.model.value, messages: history }),
        credentials: "same-origin",
      });
      if (!response.ok || !response.body) {
        let text = response.statusText;
        try { text = (await response.json()).error.message; } catch { /* not JSON */ }
        showError(text);
        history.pop();
        answer.remove();
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        const events = pending.split("\n\n");
        pending = events.pop();
        for (const event of events) handle(event, answer, reply);
      }
      if (pending.trim()) handle(pending, answer, reply);
      history.push({ role: "assistant", content: reply.text });
    } catch (failure) {
      showError(String(failure));
      history.pop();
    } finally {
      answer.removeAttribute("aria-busy");
      button.disabled = false;
    }
  });
})();
