// The web UI's one script: keeps the server-rendered pages live by reading the API's JSON routes.
//
// Safety: every value from the API goes into the page through textContent (or an attribute set
// with setAttribute), never innerHTML, so a run named <script>alert(1)</script> stays text. The
// pages' Content-Security-Policy allows this file and nothing inline.
// Every URL starts with the page's root path (ORCHESTRATOR_API_ROOT_PATH behind a proxy).
"use strict";

(function () {
  const body = document.body;
  const root = body.dataset.root || "";
  const finalStates = new Set((body.dataset.finalStates || "").split(",").filter(Boolean));
  const LIST_EVERY_MS = 3000;
  const RUN_EVERY_MS = 2000;

  // ---- small helpers --------------------------------------------------------------------------

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  function shownTime(iso) {
    return iso ? String(iso).slice(0, 19).replace("T", " ") : "";
  }

  // As api/ui/rendering.py shown_duration writes it.
  function shownDuration(started, ended) {
    if (!started) return "";
    const end = ended ? Date.parse(ended) : Date.now();
    const seconds = Math.max((end - Date.parse(started)) / 1000, 0);
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const whole = Math.floor(seconds);
    const minutes = Math.floor(whole / 60);
    if (minutes < 60) return minutes + " min " + String(whole % 60).padStart(2, "0") + " s";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }

  function stateBadge(state) {
    return el("span", state, { class: "state", "data-state": state });
  }

  function setState(node, state) {
    node.textContent = state;
    node.setAttribute("data-state", state);
  }

  function say(text) {
    const status = document.getElementById("live-status");
    if (status) status.textContent = text;
  }

  // GET a JSON route of the API; null (and a word on the page) when it cannot be read.
  async function getJson(path) {
    const response = await fetch(root + "/api" + path, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      redirect: "manual",
    });
    if (response.status === 401 || response.type === "opaqueredirect") {
      say("The API key is needed again: reload the page to log in.");
      throw new Error("unauthorized");
    }
    return response;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell === undefined || cell === null ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function every(ms, step) {
    let timer = null;
    async function tick() {
      let again = true;
      try {
        again = (await step()) !== false;
        if (again) say("Live: updated " + new Date().toLocaleTimeString());
      } catch (error) {
        if (String(error && error.message) === "unauthorized") return;
        say("Could not refresh (" + error + "); trying again.");
      }
      if (again) timer = setTimeout(tick, ms);
    }
    tick();
    return () => clearTimeout(timer);
  }

  // ---- the run list ---------------------------------------------------------------------------

  function runListPage() {
    const tbody = document.getElementById("run-rows");
    const count = document.getElementById("run-count");
    const query = count.dataset.apiQuery || "";
    every(LIST_EVERY_MS, async () => {
      const response = await getJson("/flow-runs?" + query);
      if (!response.ok) throw new Error("HTTP " + response.status);
      const page = await response.json();
      const rows = page.items.map((run) => {
        const link = el("a", run.name || run.id, { class: "run-link", href: root + "/ui/runs/" + run.id });
        const tr = row([
          stateBadge(run.state),
          run.flow_name,
          link,
          run.deployment || "",
          shownTime(run.started || run.scheduled_start),
          shownDuration(run.started, run.ended),
          run.queue,
          run.attempt,
        ]);
        tr.setAttribute("data-run-id", run.id);
        return tr;
      });
      replaceRows(tbody, rows);
      count.textContent = page.total
        ? page.offset + 1 + "–" + (page.offset + page.items.length) + " of " + page.total
        : "No flow runs match.";
    });
  }

  // ---- one run --------------------------------------------------------------------------------

  function runPage() {
    const article = document.getElementById("run");
    const runId = article.dataset.runId;
    const base = "/flow-runs/" + encodeURIComponent(runId);
    let logsAfter = 0;
    let wasFinal = false;
    const TASKS_PER_PAGE = 100;
    let taskOffset = 0;

    async function refreshRun() {
      const response = await getJson(base);
      if (!response.ok) throw new Error("HTTP " + response.status);
      const run = await response.json();
      document.getElementById("run-name").textContent = run.name || run.id;
      setState(document.getElementById("run-state"), run.state);
      document.getElementById("run-message").textContent = run.state_message || "";
      document.getElementById("run-attempt").textContent = run.attempt;
      document.getElementById("run-started").textContent = shownTime(run.started);
      document.getElementById("run-ended").textContent = shownTime(run.ended);
      document.getElementById("run-duration").textContent = shownDuration(run.started, run.ended);
      return run;
    }

    // A task run's label, linked to its Celery task in Flower when ORCHESTRATOR_FLOWER_URL is set
    // (a task run's id is its Celery task id).
    const flower = article.dataset.flower || "";
    function taskLabel(t) {
      const label = t.label || t.task_name;
      if (!flower) return label;
      const href = flower + "/task/" + encodeURIComponent(t.id);
      return el("a", label, { class: "flower-link", href: href, target: "_blank", rel: "noopener noreferrer" });
    }

    async function refreshTasks() {
      const response = await getJson(base + "/task-runs?limit=" + TASKS_PER_PAGE + "&offset=" + taskOffset);
      if (!response.ok) return;
      const tasks = await response.json();
      const total = Number(response.headers.get("X-Total-Count") || tasks.length);
      document.getElementById("task-count").textContent = total
        ? taskOffset + 1 + "–" + (taskOffset + tasks.length) + " of " + total
        : "No task runs yet.";
      document.getElementById("task-newer").hidden = taskOffset === 0;
      document.getElementById("task-older").hidden = taskOffset + TASKS_PER_PAGE >= total;
      replaceRows(
        document.getElementById("task-rows"),
        tasks.map((t) => {
          const tr = row([
            taskLabel(t),
            stateBadge(t.state),
            shownTime(t.started),
            shownTime(t.ended),
            t.worker,
            t.attempts,
            t.state_message,
          ]);
          tr.setAttribute("data-task-run-id", t.id);
          return tr;
        }),
      );
    }

    async function refreshHistory() {
      const response = await getJson(base + "/states?limit=1000");
      if (!response.ok) return;
      const events = await response.json();
      replaceRows(
        document.getElementById("history-rows"),
        events.map((e) => row([shownTime(e.time), e.label || e.run_id, stateBadge(e.state), e.message, e.cause])),
      );
    }

    async function refreshLogs() {
      const response = await getJson(base + "/logs?after=" + logsAfter);
      if (!response.ok) return;
      const lines = await response.json();
      const box = document.getElementById("logs");
      for (const line of lines) {
        box.appendChild(document.createTextNode(shownTime(line.time) + " " + line.level + " " + line.message + "\n"));
        logsAfter = Math.max(logsAfter, line.seq);
      }
    }

    async function showDiagnosis(waiting) {
      const section = document.getElementById("diagnosis");
      if (!waiting) {
        section.hidden = true;
        return;
      }
      const response = await getJson(base + "/diagnosis");
      if (!response.ok) return;
      const found = await response.json();
      document.getElementById("diagnosis-summary").textContent = found.summary;
      replaceRows(
        document.getElementById("diagnosis-reasons"),
        found.reasons.map((reason) => el("li", reason)),
      );
      section.hidden = false;
    }

    async function showOutcome(run) {
      if (run.state === "Completed") {
        const response = await getJson(base + "/result");
        const value = document.getElementById("result-value");
        if (response.ok) value.textContent = JSON.stringify(await response.json(), null, 2);
        else value.textContent = (await response.json()).detail;
        document.getElementById("result").hidden = false;
        return;
      }
      const response = await getJson(base + "/failures");
      if (!response.ok) return;
      const failures = await response.json();
      const cause = failures.root_cause;
      if (!cause) return;
      document.getElementById("root-cause-task").textContent = cause.label || cause.task_name;
      setState(document.getElementById("root-cause-state"), cause.state);
      document.getElementById("root-cause-message").textContent = cause.message;
      document.getElementById("root-cause-traceback").textContent = cause.traceback || "(no traceback: nothing raised)";
      const others = failures.total - 1;
      const more = [];
      if (others > 0) more.push(others + " other task run(s) failed on their own");
      if (failures.upstream_failed > 0) more.push(failures.upstream_failed + " did not run because of it (UpstreamFailed)");
      document.getElementById("root-cause-more").textContent = more.join("; ");
      document.getElementById("root-cause").hidden = false;
    }

    function turnTasks(by) {
      taskOffset = Math.max(taskOffset + by, 0);
      refreshTasks().catch(() => {});
    }
    document.getElementById("task-newer").addEventListener("click", () => turnTasks(-TASKS_PER_PAGE));
    document.getElementById("task-older").addEventListener("click", () => turnTasks(TASKS_PER_PAGE));

    every(RUN_EVERY_MS, async () => {
      const run = await refreshRun();
      const final = finalStates.has(run.state);
      await Promise.all([refreshTasks(), refreshHistory(), refreshLogs(), showDiagnosis(!final)]);
      if (final && !wasFinal) {
        wasFinal = true;
        await showOutcome(run);
        // one more pass: the last task events and log lines may be recorded just after the run's
        setTimeout(() => Promise.all([refreshTasks(), refreshHistory(), refreshLogs()]).catch(() => {}), RUN_EVERY_MS);
        say("The run ended " + run.state + ".");
        return false;
      }
      return true;
    });
  }

  if (body.dataset.page === "runs") runListPage();
  else if (body.dataset.page === "run") runPage();
})();
