// The web UI's actions: cancel, retry and rename on the run page, and the start form of a flow.
//
// Each is a fetch() POST to a /ui route (api/ui/actions.py) that calls the API's own route and
// answers its JSON. Every request carries the page's CSRF token (the csrf-token meta tag) in the
// X-CSRF-Token header: without it the server refuses with 403 and does nothing.
// As in ui.js, values from the API reach the page through textContent only.
"use strict";

(function () {
  const body = document.body;
  const root = body.dataset.root || "";
  const finalStates = new Set((body.dataset.finalStates || "").split(",").filter(Boolean));
  const tokenTag = document.querySelector('meta[name="csrf-token"]');
  const token = tokenTag ? tokenTag.getAttribute("content") : "";

  // POST JSON to a /ui action; the parsed answer with its status (a login redirect becomes a 401).
  async function post(path, payload) {
    const response = await fetch(root + "/ui" + path, {
      method: "POST",
      credentials: "same-origin",
      redirect: "manual",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": token },
      body: JSON.stringify(payload === undefined ? {} : payload),
    });
    if (response.type === "opaqueredirect") {
      return { status: 401, data: { detail: "The API key is needed again: reload the page to log in." } };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = { detail: "HTTP " + response.status };
    }
    return { status: response.status, data: data };
  }

  // A 4xx/5xx body's detail as one sentence (FastAPI's list of problems, or a plain string).
  function detailText(data) {
    const detail = data && data.detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
    return String(detail || "failed");
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ---- the run page ---------------------------------------------------------------------------

  function runActions() {
    const article = document.getElementById("run");
    const runId = article.dataset.runId;
    const base = "/runs/" + encodeURIComponent(runId);
    const status = document.getElementById("action-status");
    const cancel = document.getElementById("action-cancel");
    const retry = document.getElementById("action-retry");
    const renameForm = document.getElementById("rename-form");
    const renameInput = document.getElementById("rename-name");
    let busy = false;

    function say(text, bad) {
      status.textContent = text;
      status.classList.toggle("problem", Boolean(bad));
    }

    // The buttons follow the state ui.js shows: cancel while the run is under way, retry once it
    // ended without completing (the API refuses the others with a 409 anyway).
    function shownState() {
      return document.getElementById("run-state").getAttribute("data-state") || "";
    }
    function fitButtons() {
      const state = shownState();
      const final = finalStates.has(state);
      cancel.disabled = busy || final;
      retry.disabled = busy || !final || state === "Completed";
    }
    fitButtons();
    setInterval(fitButtons, 500);

    async function act(what, path, payload) {
      busy = true;
      fitButtons();
      say(what + "…", false);
      try {
        const answer = await post(path, payload);
        if (answer.status >= 300) {
          say(what + " refused: " + detailText(answer.data), true);
          return null;
        }
        return answer.data;
      } catch (error) {
        say(what + " failed: " + error, true);
        return null;
      } finally {
        busy = false;
        fitButtons();
      }
    }

    cancel.addEventListener("click", async () => {
      const done = await act("Cancel", base + "/cancel");
      if (done) say("Cancel: " + done.detail, false); // ui.js shows the run turn Cancelled
    });

    // A retry makes a finished run run again, but ui.js stopped following it when it ended: once
    // the API shows the new attempt under way (or already ended), the page reloads and follows it.
    retry.addEventListener("click", async () => {
      const before = shownState();
      const attempt = document.getElementById("run-attempt").textContent.trim();
      const done = await act("Retry", base + "/retry");
      if (!done) return;
      say("Retry: " + done.detail + " Following it…", false);
      for (let i = 0; i < 120; i++) {
        await sleep(500);
        const response = await fetch(root + "/api/flow-runs/" + encodeURIComponent(runId), {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        if (!response.ok) continue;
        const run = await response.json();
        if (run.state !== before || String(run.attempt) !== attempt) {
          window.location.reload();
          return;
        }
      }
      say("Retry: " + done.detail + " Reload the page to follow it.", false);
    });

    renameForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = renameInput.value.trim();
      if (!name) {
        say("Rename: give the run's new name (1 to 500 characters).", true);
        return;
      }
      const done = await act("Rename", base + "/rename", { name: name });
      if (!done) return;
      document.getElementById("run-name").textContent = done.name;
      document.title = done.name + " · orchestrator";
      say("Renamed to " + done.name + ".", false);
    });
  }

  // ---- a flow's start form --------------------------------------------------------------------

  // A field's value as the API wants it, or undefined to leave the parameter out (the flow's
  // default applies, or the API says it is missing). Only JSON text is judged here (it must
  // parse); every other value goes as typed and the API says what is wrong with it.
  function fieldValue(input) {
    const kind = input.dataset.kind;
    const text = kind === "string" ? input.value : input.value.trim();
    if (text === "") return undefined;
    if (kind === "integer" || kind === "number") {
      const number = Number(text);
      return Number.isFinite(number) ? number : text;
    }
    if (kind === "boolean" || kind === "enum") return JSON.parse(text); // option values are JSON
    if (kind === "json") {
      try {
        return JSON.parse(text);
      } catch (error) {
        throw new Error("not valid JSON (" + error.message + "): write e.g. [1, 2] or {\"a\": 1}");
      }
    }
    return text;
  }

  function startForm() {
    const form = document.getElementById("start-form");
    const flow = form.dataset.flow;
    const problem = document.getElementById("start-problem");
    const submit = document.getElementById("start-submit");

    function errorBox(name) {
      return [...form.querySelectorAll("[data-error-for]")].find((e) => e.dataset.errorFor === name) || null;
    }
    function clear() {
      for (const box of form.querySelectorAll("[data-error-for]")) box.textContent = "";
      for (const field of form.querySelectorAll(".field")) field.classList.remove("invalid");
      problem.textContent = "";
    }
    function show(name, message) {
      const box = errorBox(name);
      if (!box) {
        problem.textContent = (problem.textContent ? problem.textContent + " " : "") + message;
        return;
      }
      box.textContent = (box.textContent ? box.textContent + "; " : "") + message;
      box.closest(".field").classList.add("invalid");
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clear();
      const parameters = {};
      let readable = true;
      for (const input of form.querySelectorAll("[data-param]")) {
        try {
          const value = fieldValue(input);
          if (value !== undefined) parameters[input.dataset.param] = value;
        } catch (error) {
          show(input.dataset.param, error.message);
          readable = false;
        }
      }
      if (!readable) return;
      const payload = { parameters: parameters };
      const name = document.getElementById("run-name-input").value.trim();
      if (name) payload.name = name;
      submit.disabled = true;
      try {
        const answer = await post("/flows/" + encodeURIComponent(flow) + "/runs", payload);
        if (answer.status === 201) {
          window.location.assign(root + "/ui/runs/" + encodeURIComponent(answer.data.id));
          return;
        }
        const detail = answer.data && answer.data.detail;
        if (answer.status === 422 && Array.isArray(detail)) {
          // loc ["body", "parameters", name] names a parameter; ["body", "name"] the run name
          for (const item of detail) {
            const loc = item.loc || [];
            if (loc[1] === "parameters" && loc.length > 2) show(String(loc[2]), item.msg);
            else if (loc[1] === "name") show("(name)", item.msg);
            else show("", item.msg);
          }
        } else {
          problem.textContent = "Not started: " + detailText(answer.data);
        }
      } catch (error) {
        problem.textContent = "Not started: " + error;
      } finally {
        submit.disabled = false;
      }
    });
  }

  if (body.dataset.page === "run") runActions();
  else if (body.dataset.page === "flow" && document.getElementById("start-form")) startForm();
})();
