// The run page's graph and timeline, drawn as inline SVG (no library, nothing from elsewhere).
//
// The graph comes laid out from /ui/runs/{id}/graph.json (api/ui/graph_page.py: boxes at their
// places, big maps folded into counts), is drawn in one pass (one fragment appended once), and
// is then kept live by polling only what changed: /api/flow-runs/{id}/task-states?since=...
// Only the boxes whose members changed are repainted. The timeline draws each task run as a bar
// from its start to its end, with its worker, from /api/flow-runs/{id}/task-runs.
// Safety as in ui.js: API values go in through textContent and setAttribute only.
"use strict";

(function () {
  const body = document.body;
  if (body.dataset.page !== "run") return;
  const root = body.dataset.root || "";
  const finalStates = new Set((body.dataset.finalStates || "").split(",").filter(Boolean));
  const article = document.getElementById("run");
  const runId = article.dataset.runId;
  const api = "/api/flow-runs/" + encodeURIComponent(runId);
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 2000;
  const TIMELINE_MS = 4000;
  const TIMELINE_MAX = 1000; // bars drawn at most (the first by start time); the page says how many more
  const BAD = new Set(["Failed", "Crashed", "TimedOut", "UpstreamFailed"]);
  const BUSY = new Set(["Running", "Retrying", "AwaitingRetry"]);
  const OVERLAP_S = 2; // ask again for the last seconds: a change recorded in the same instant is not missed

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function note(id, text) {
    const where = document.getElementById(id);
    if (where) where.textContent = text;
  }

  async function getJson(path) {
    const response = await fetch(root + path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status + " for " + path);
    return { body: await response.json(), headers: response.headers };
  }

  function runEnded() {
    const state = document.getElementById("run-state");
    return state !== null && finalStates.has(state.dataset.state || "");
  }

  // ---- the graph ----------------------------------------------------------------------------

  const stateOf = new Map(); // task run id -> state
  const boxOf = new Map(); // task run id -> its box
  const boxes = new Map(); // box id -> {box, group, sub, chips}
  let view = null;
  let since = 0;
  let reloadAfter = 0; // a drawing is re-laid out at most this often (a dynamic run's new task runs)

  // What a box shows: one state, or counts by state (worst first) and the state that colours it.
  function summary(box) {
    const members = box.kind === "map" ? box.members.slice(1) : box.members;
    if (box.kind !== "fold" && box.kind !== "map") return { state: stateOf.get(box.members[0]) || "Pending", text: "" };
    const counts = new Map();
    for (const id of members) {
      const s = stateOf.get(id) || "Pending";
      counts.set(s, (counts.get(s) || 0) + 1);
    }
    const text = [...counts.entries()]
      .sort((a, b) => b[1] - a[1])
      .map(([s, n]) => n + " " + s)
      .join(" · ");
    const seen = [...counts.keys()];
    let state = stateOf.get(box.members[0]) || "Pending"; // a map: its own node's state
    if (box.kind === "fold") {
      if (seen.some((s) => BAD.has(s))) state = seen.find((s) => BAD.has(s));
      else if (seen.some((s) => BUSY.has(s))) state = "Running";
      else if (seen.length === 1) state = seen[0];
      else state = counts.has("Completed") ? "Running" : "Pending"; // partly done
    }
    return { state, text: text || "no task runs yet", counts };
  }

  function paint(entry) {
    const { box, group, sub, chips } = entry;
    const shown = summary(box);
    group.setAttribute("data-state", shown.state);
    if (box.kind === "fold" || box.kind === "map") {
      const children = box.members.length - (box.kind === "map" ? 1 : 0);
      if (chips && children <= view.fold_over) {
        sub.textContent = box.kind === "map" ? shown.state + " · " + children + " mapped" : shown.text;
        const squares = chips.childNodes;
        box.members.slice(1).forEach((id, i) => {
          if (squares[i]) squares[i].setAttribute("data-state", stateOf.get(id) || "Pending");
        });
      } else {
        sub.textContent = shown.text;
      }
    } else {
      sub.textContent = shown.state;
    }
  }

  function drawBox(box) {
    const link = box.child_run_id || (box.flow_run_id && box.flow_run_id !== runId ? box.flow_run_id : "");
    const group = svg("g", { class: "node", "data-box-id": box.id, "data-kind": box.kind, transform: `translate(${box.x},${box.y})` });
    group.appendChild(svg("rect", { class: "node-box", width: 200, height: box.h, rx: 6 }));
    const title = svg("text", { class: "node-label", x: 8, y: 17 }, box.label);
    group.appendChild(title);
    const sub = svg("text", { class: "node-state", x: 8, y: 34 });
    group.appendChild(sub);
    if (link) group.appendChild(svg("title", {}, box.label + " (child flow run " + link + ")"));
    let chips = null;
    const children = box.members.length - 1;
    if (box.kind === "map" && children > 0 && children <= view.fold_over) {
      chips = svg("g", { class: "chips", transform: "translate(8,42)" });
      box.members.slice(1).forEach((id, i) => {
        const chip = svg("rect", { class: "chip", x: (i % 14) * 13, y: Math.floor(i / 14) * 14, width: 12, height: 12 });
        chip.appendChild(svg("title", {}, id));
        chips.appendChild(chip);
      });
      group.appendChild(chips);
    }
    let outer = group;
    if (link) {
      outer = svg("a", { class: "child-run", href: root + "/ui/runs/" + link, "data-child-run-id": link });
      outer.appendChild(group);
    }
    const entry = { box, group, sub, chips };
    boxes.set(box.id, entry);
    for (const id of box.members) boxOf.set(id, entry);
    paint(entry);
    return outer;
  }

  function drawGraph(laidOut) {
    view = laidOut;
    stateOf.clear();
    boxOf.clear();
    boxes.clear();
    for (const [id, state] of Object.entries(view.states)) stateOf.set(id, state);
    const started = performance.now();
    const picture = svg("svg", {
      id: "graph-svg",
      width: Math.max(view.width, 200),
      height: Math.max(view.height, 44),
      viewBox: `0 0 ${Math.max(view.width, 200)} ${Math.max(view.height, 44)}`,
    });
    const where = new Map(view.boxes.map((b) => [b.id, b]));
    const edges = svg("g", { class: "edges" });
    for (const [from, to] of view.edges) {
      const a = where.get(from);
      const b = where.get(to);
      if (!a || !b) continue;
      const x1 = a.x + 200;
      const y1 = a.y + a.h / 2;
      const x2 = b.x;
      const y2 = b.y + b.h / 2;
      const bend = (x2 - x1) / 2;
      edges.appendChild(svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}` }));
    }
    picture.appendChild(edges);
    const nodes = svg("g", { class: "nodes" });
    for (const box of view.boxes) nodes.appendChild(drawBox(box));
    picture.appendChild(nodes);
    document.getElementById("graph").replaceChildren(picture);
    const took = performance.now() - started;
    window.__graphDrawMs = took; // read by benchmarks/ui_graph_bench.py
    const folded = view.boxes.filter((b) => b.kind === "fold").length;
    note(
      "graph-note",
      view.nodes + " node(s) in " + view.boxes.length + " box(es)" + (folded ? ", " + folded + " folded into counts" : "") +
        (view.cut ? "; the plan is larger than what is drawn" : "") + ".",
    );
  }

  async function loadGraph() {
    const { body: laidOut } = await getJson("/ui/runs/" + encodeURIComponent(runId) + "/graph.json");
    since = laidOut.since;
    drawGraph(laidOut);
    reloadAfter = Date.now() + 3000;
  }

  // Apply changed states; true when the drawing needs laying out again (task runs it has no box for).
  function apply(items) {
    const dirty = new Set();
    let relayout = false;
    for (const item of items) {
      if (stateOf.get(item.id) === item.state && boxOf.has(item.id)) continue;
      stateOf.set(item.id, item.state);
      let entry = boxOf.get(item.id);
      if (!entry) {
        const mapped = /^(.+)-(\d+)$/.exec(item.id);
        const owner = mapped ? boxOf.get(mapped[1]) : undefined;
        if (owner && owner.box.kind === "map") {
          owner.box.members.push(item.id);
          boxOf.set(item.id, owner);
          entry = owner;
          if (owner.box.members.length - 1 <= view.fold_over || owner.chips) relayout = true; // chips to add
        } else {
          relayout = true; // a dynamic run's new task run
          continue;
        }
      }
      dirty.add(entry);
    }
    for (const entry of dirty) paint(entry);
    return relayout;
  }

  async function pollGraph() {
    let last = false;
    for (;;) {
      try {
        const ended = runEnded();
        const { body: changed } = await getJson(api + "/task-states?since=" + Math.max(since - OVERLAP_S, 0));
        since = Math.max(since, changed.until);
        const relayout = apply(changed.items) || changed.truncated;
        if (relayout && (Date.now() >= reloadAfter || ended)) await loadGraph();
        if (ended) {
          if (last) return; // one more pass after the end: the last events are recorded just after it
          last = true;
        }
      } catch (error) {
        note("graph-note", "Could not refresh the graph (" + error + "); trying again.");
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  // ---- the timeline ---------------------------------------------------------------------------

  function seconds(iso) {
    return iso ? Date.parse(iso) / 1000 : null;
  }

  function drawTimeline(tasks, total) {
    const ran = tasks.filter((t) => t.started);
    const box = document.getElementById("timeline");
    if (!ran.length) {
      box.replaceChildren();
      note("timeline-note", "No task run has started yet.");
      return;
    }
    const now = Date.now() / 1000;
    const t0 = Math.min(...ran.map((t) => seconds(t.started)));
    const t1 = Math.max(...ran.map((t) => seconds(t.ended) || now), t0 + 0.001);
    const LABEL = 260;
    const WIDTH = 1000;
    const ROW = 16;
    const span = WIDTH - LABEL - 10;
    const x = (s) => LABEL + ((s - t0) / (t1 - t0)) * span;
    const height = 24 + ran.length * ROW;
    const picture = svg("svg", { id: "timeline-svg", width: WIDTH, height, viewBox: `0 0 ${WIDTH} ${height}` });
    for (let i = 0; i <= 4; i++) {
      const at = t0 + ((t1 - t0) * i) / 4;
      picture.appendChild(svg("line", { class: "tick", x1: x(at), x2: x(at), y1: 14, y2: height }));
      const label = i === 0 ? new Date(t0 * 1000).toISOString().slice(11, 19) : "+" + (at - t0).toFixed(at - t0 < 10 ? 2 : 0) + " s";
      picture.appendChild(svg("text", { class: "tick-label", x: x(at), y: 10, "text-anchor": i === 4 ? "end" : "middle" }, label));
    }
    const bars = svg("g", { class: "bars" });
    ran.forEach((t, i) => {
      const y = 20 + i * ROW;
      const start = seconds(t.started);
      const end = seconds(t.ended) || now;
      const row = svg("g", { class: "bar-row", "data-task-run-id": t.id, "data-state": t.state });
      row.appendChild(svg("text", { class: "bar-label", x: 0, y: y + 11 }, (t.label || t.task_name) + " · " + (t.worker || "?")));
      row.appendChild(svg("rect", { class: "bar", x: x(start), y: y + 2, width: Math.max(x(end) - x(start), 2), height: ROW - 4, rx: 2 }));
      bars.appendChild(row);
    });
    picture.appendChild(bars);
    box.replaceChildren(picture);
    const left = total - tasks.length;
    note("timeline-note", ran.length + " task run(s) by start time" + (left > 0 ? "; " + left + " more not drawn" : "") + ".");
  }

  async function pollTimeline() {
    let last = false;
    for (;;) {
      try {
        const ended = runEnded();
        const { body: tasks, headers } = await getJson(api + "/task-runs?limit=" + TIMELINE_MAX);
        drawTimeline(tasks, Number(headers.get("X-Total-Count") || tasks.length));
        if (ended) {
          if (last) return;
          last = true;
        }
      } catch (error) {
        note("timeline-note", "Could not refresh the timeline (" + error + "); trying again.");
      }
      await new Promise((resolve) => setTimeout(resolve, TIMELINE_MS));
    }
  }

  loadGraph()
    .catch((error) => note("graph-note", "Could not draw the graph (" + error + ")."))
    .then(pollGraph);
  pollTimeline();
})();
