// The agent workspace: its sessions (new, resume, rename, delete, status) and the chat of the
// selected one, drawn from the session's event stream (see `followSession`): streaming text,
// tool calls (details in a side panel), file changes, task status, questions, results.

import { del, followSession, get, listAll, patch, post, seg } from "./api.js";
import { badge, busy, confirmDialog, formatTime, h, replace, showError } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { refreshInboxCount } from "./inbox.js";
import { markAnswered, questionCard } from "./questions.js";

const ACTIVE = new Set(["queued", "running", "waiting"]);
/** How many stored events a session opens with: a long one starts near its end, and "Load
 * earlier events" reaches back this many more each time (replaying from there, so the page's
 * state is built in order, as it is live). */
export const EVENT_WINDOW = 150;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** The UI link of a path a tool reported (`/agent/…`, `/space/…`), or null. */
export function driveLink(agentId, path) {
  if (path.startsWith("/agent/")) return `#/agents/${seg(agentId)}/drive?path=${encodeURIComponent(path.slice(7))}`;
  if (path.startsWith("/space/")) return `#/space/drive?path=${encodeURIComponent(path.slice(7))}`;
  return null;
}

function fileLinks(agentId, paths) {
  return h(
    "ul",
    { class: "files" },
    paths.map((path) => {
      const href = driveLink(agentId, path);
      return h("li", {}, href ? h("a", { href, class: "file-link" }, path) : path);
    }),
  );
}

/** A short one-line view of a tool call's arguments. */
function summary(args) {
  const first = Object.values(args ?? {})[0];
  const text = typeof first === "string" ? first : JSON.stringify(args ?? {});
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

/** A small inline form asking for a Drive path; `save(path, drive)` does the work. */
function saveForm(label, defaultPath, save) {
  const id = `save-${Math.random().toString(36).slice(2)}`;
  const input = h("input", { id, name: "path", value: defaultPath, required: true });
  const drive = h("select", { name: "drive", "aria-label": "Drive" }, h("option", { value: "agent" }, "Agent Drive"), h("option", { value: "space" }, "Space Drive"));
  const button = h("button", { type: "submit", class: "primary" }, "Save");
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const done = h("p", { class: "status", role: "status" });
  const form = h("form", { class: "save-form", hidden: true }, h("label", { for: id }, "Path in Drive"), h("div", { class: "row" }, input, drive, button), slot, done);
  const toggle = h("button", { type: "button", class: "save-toggle", "aria-expanded": "false" }, label);
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) input.focus();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await busy(
      button,
      async () => {
        const saved = await save(input.value.trim(), drive.value);
        replace(done, "Saved: ", h("a", { href: saved.href, class: "file-link" }, `${saved.path} (version ${saved.version})`));
      },
      slot,
    );
  });
  return h("div", { class: "save" }, toggle, form);
}

export async function workspaceView(main, { agentId, sessionId }) {
  const controller = new AbortController();
  const agent = await get(`/v1/agents/${seg(agentId)}`);
  const base = `#/agents/${seg(agentId)}`;

  // --- sessions -----------------------------------------------------------------------------
  const sessionList = h("ul", { class: "session-list", id: "sessions" });
  const newSession = h("button", { type: "button", class: "primary", id: "new-session" }, "New session");
  const sessionsError = h("div", { class: "error-slot", "aria-live": "polite" });
  newSession.addEventListener("click", () =>
    busy(
      newSession,
      async () => {
        const created = await post(`/v1/agents/${seg(agentId)}/sessions`, {});
        location.hash = `${base}/sessions/${seg(created.id)}`;
      },
      sessionsError,
    ),
  );

  function sessionItem(session) {
    const current = session.id === sessionId;
    const link = h(
      "a",
      { href: `${base}/sessions/${seg(session.id)}`, class: "session-link", "aria-current": current ? "page" : null },
      session.title || "Untitled session",
    );
    const rename = h("button", { type: "button", class: "small rename", "aria-label": `Rename ${session.title || "session"}` }, "Rename");
    const remove = h("button", { type: "button", class: "small danger delete", "aria-label": `Delete ${session.title || "session"}` }, "Delete");
    const item = h(
      "li",
      { class: current ? "session current" : "session", dataset: { sessionId: session.id } },
      h("div", { class: "session-title" }, link, badge(session.status)),
      h("div", { class: "row session-actions" }, h("span", { class: "muted" }, formatTime(session.last_activity_at)), rename, remove),
    );
    rename.addEventListener("click", () => {
      const input = h("input", { class: "rename-input", value: session.title, "aria-label": "New title", maxlength: 200 });
      let finished = false;
      const finish = async (save) => {
        if (finished) return;
        finished = true;
        if (save && input.value.trim() !== session.title) {
          try {
            await patch(`/v1/sessions/${seg(session.id)}`, { title: input.value.trim() });
            if (current) replace(titleElement, input.value.trim() || "Untitled session");
          } catch (error) {
            showError(sessionsError, error);
          }
        }
        await loadSessions();
        item.querySelector(".rename")?.focus();
      };
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") {
          event.preventDefault();
          finish(true);
        } else if (event.key === "Escape") {
          event.preventDefault();
          finish(false);
        }
      });
      input.addEventListener("blur", () => finish(false));
      link.replaceWith(input);
      input.focus();
      input.select();
    });
    remove.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete the session “${session.title || session.id}” and its history?`))) return;
      await busy(
        remove,
        async () => {
          await del(`/v1/sessions/${seg(session.id)}`);
          if (current) location.hash = base;
          else await loadSessions();
        },
        sessionsError,
      );
    });
    return item;
  }

  let currentSession = null;
  async function loadSessions() {
    const sessions = await listAll(`/v1/agents/${seg(agentId)}/sessions`, { max: 200 });
    sessionList.replaceChildren(...sessions.map(sessionItem));
    if (sessions.length === 0) sessionList.append(h("li", { class: "empty" }, "No session yet."));
    currentSession = sessions.find((session) => session.id === sessionId) ?? currentSession;
  }
  let reloadTimer = null;
  const reloadSessionsSoon = () => {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => loadSessions().catch(() => {}), 300);
  };

  // --- chat ---------------------------------------------------------------------------------
  const titleElement = h("span", { id: "session-title" });
  const streamState = h("span", { class: "stream-state", id: "stream-state", role: "status" });
  const log = h("ol", { class: "log", id: "log", "aria-label": "Conversation", "aria-live": "polite" });
  const message = h("textarea", { id: "message", name: "text", rows: 3, required: true, placeholder: "Message the agent (Ctrl+Enter sends)" });
  const send = h("button", { type: "submit", class: "primary", id: "send" }, "Send");
  const cancel = h("button", { type: "button", class: "danger", id: "cancel", disabled: true }, "Cancel task");
  const composerError = h("div", { class: "error-slot", "aria-live": "polite" });
  const composer = h("form", { class: "composer", id: "composer" }, h("label", { for: "message", class: "visually-hidden" }, "Message"), message, composerError, h("div", { class: "row" }, send, cancel));
  const headerTools = h("div", { class: "row header-tools" });
  const chat = h(
    "section",
    { class: "chat", "aria-labelledby": "session-heading" },
    h("header", { class: "chat-header" }, h("h1", { id: "session-heading" }, titleElement), streamState, headerTools),
    log,
    composer,
  );

  // --- the side panel: one tool call in full -----------------------------------------------
  const panelBody = h("div", { class: "panel-body" });
  const closePanel = h("button", { type: "button", class: "small", id: "close-panel" }, "Close");
  const panel = h("aside", { class: "panel", id: "panel", "aria-label": "Tool call", tabindex: "-1", hidden: true }, h("div", { class: "row panel-head" }, h("h2", {}, "Tool call"), closePanel), panelBody);
  let panelCall = null;
  let panelOpener = null;
  const hidePanel = () => {
    panel.hidden = true;
    panelCall = null;
    panelOpener?.focus();
  };
  closePanel.addEventListener("click", hidePanel);
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") hidePanel();
  });

  const calls = new Map();
  function drawPanel() {
    const entry = calls.get(panelCall);
    if (!entry) return;
    const result = entry.result;
    replace(
      panelBody,
      h("dl", {}, h("dt", {}, "Tool"), h("dd", { class: "tool-name" }, entry.call.name), h("dt", {}, "Call"), h("dd", { class: "mono" }, entry.call.call_id), h("dt", {}, "Status"), h("dd", {}, badge(result?.status ?? "running")), result && [h("dt", {}, "Duration"), h("dd", {}, `${result.duration_ms} ms`)]),
      h("h3", {}, "Input"),
      h("pre", { class: "tool-input" }, JSON.stringify(entry.call.args, null, 2)),
      h("h3", {}, "Output"),
      h("pre", { class: "tool-output" }, result ? String(result.output) : entry.live || "…"),
    );
  }
  function openPanel(callId, opener) {
    panelCall = callId;
    panelOpener = opener;
    drawPanel();
    panel.hidden = false;
    panel.focus();
  }

  const layout = h(
    "div",
    { class: "workspace" },
    h(
      "aside",
      { class: "sessions", "aria-labelledby": "sessions-heading" },
      h("div", { class: "row" }, h("h2", { id: "sessions-heading" }, agent.name), newSession),
      h("nav", { class: "row links", "aria-label": "Agent" }, h("a", { href: `${base}/drive` }, "Drive"), h("a", { href: `${base}/computer` }, "Computer"), h("a", { href: `${base}/edit` }, "Settings")),
      sessionsError,
      sessionList,
    ),
    chat,
    panel,
  );
  replace(main, layout);
  await loadSessions();

  // --- events to the log -------------------------------------------------------------------
  const tasks = new Map(); // task_id → {status, line, streaming}
  const questions = new Map(); // question_id → card
  let stuckToBottom = true;
  log.addEventListener("scroll", () => {
    stuckToBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  });
  const add = (node) => {
    log.append(node);
    if (stuckToBottom) log.scrollTop = log.scrollHeight;
    return node;
  };

  function taskOf(taskId) {
    let task = tasks.get(taskId);
    if (!task) {
      const line = h("li", { class: "task-status", dataset: { taskId } });
      task = { status: null, line, streaming: null };
      tasks.set(taskId, task);
      add(line);
    }
    return task;
  }

  function updateCancel() {
    const active = [...tasks.entries()].filter(([, task]) => ACTIVE.has(task.status));
    cancel.disabled = active.length === 0;
    cancel.dataset.taskId = active.length ? active[active.length - 1][0] : "";
  }

  function assistantBubble(taskId) {
    const task = taskOf(taskId);
    if (!task.streaming) {
      task.streaming = add(h("li", { class: "msg assistant streaming", dataset: { taskId } }, h("div", { class: "text" })));
    }
    return task.streaming;
  }

  function showEvent(event) {
    const data = event.data ?? {};
    const taskId = event.task_id;
    switch (event.type) {
      case "message": {
        if (data.role === "user") {
          add(h("li", { class: "msg user", dataset: { messageId: data.message_id } }, h("div", { class: "text" }, data.text)));
          if (taskId) taskOf(taskId);
        } else {
          const bubble = taskId ? assistantBubble(taskId) : add(h("li", { class: "msg assistant" }, h("div", { class: "text" })));
          bubble.classList.remove("streaming");
          replace(bubble.querySelector(".text"), renderMarkdown(data.text));
          if (taskId) Object.assign(tasks.get(taskId), { streaming: null, replied: data.text });
        }
        break;
      }
      case "text.delta":
        if (taskId) assistantBubble(taskId).querySelector(".text").append(data.text ?? "");
        break;
      case "model.response": {
        if (!data.tool_calls?.length || !taskId) break;
        // Text the model wrote before calling tools: final as it is (it streamed, or it is replayed).
        const task = taskOf(taskId);
        if (task.streaming) {
          if (data.text) replace(task.streaming.querySelector(".text"), renderMarkdown(data.text));
          else task.streaming.remove();
          task.streaming.classList.remove("streaming");
          task.streaming = null;
        } else if (data.text) {
          add(h("li", { class: "msg assistant" }, h("div", { class: "text" }, renderMarkdown(data.text))));
        }
        break;
      }
      case "tool.call": {
        const entry = { call: data, result: null, live: "", item: null };
        calls.set(data.call_id, entry);
        if (data.name === "ask_user") break; // the question shows it
        const open = h("button", { type: "button", class: "tool-open", "aria-haspopup": "dialog" }, h("span", { class: "tool-name" }, data.name), " ", h("span", { class: "muted" }, summary(data.args)));
        open.addEventListener("click", () => openPanel(data.call_id, open));
        entry.item = add(h("li", { class: "tool", dataset: { callId: data.call_id } }, open, badge("running")));
        break;
      }
      case "tool.output": {
        const entry = calls.get(data.call_id);
        if (!entry) break;
        entry.live += data.text ?? "";
        if (panelCall === data.call_id) drawPanel();
        break;
      }
      case "tool.result": {
        const entry = calls.get(data.call_id);
        if (!entry) break;
        entry.result = data;
        entry.item?.querySelector(".badge").replaceWith(badge(data.status));
        if (panelCall === data.call_id) drawPanel();
        break;
      }
      case "question": {
        const card = questionCard(taskId, data, { onAnswered: reloadSessionsSoon });
        questions.set(data.id, card);
        add(h("li", { class: "question-item" }, card));
        break;
      }
      case "answer": {
        const card = questions.get(data.question_id);
        if (card) markAnswered(card, data);
        break;
      }
      case "drive.changed":
        add(h("li", { class: "files-changed" }, h("span", {}, "Files changed:"), fileLinks(agentId, data.paths ?? [])));
        break;
      case "task.status": {
        if (!taskId) break;
        const task = taskOf(taskId);
        task.status = data.status;
        replace(task.line, "Task ", badge(data.status), data.reason ? h("span", { class: "muted" }, ` ${data.reason}`) : null);
        if (TERMINAL.has(data.status)) {
          for (const card of questions.values()) {
            if (card.dataset.taskId === taskId && !card.classList.contains("answered")) {
              card.classList.add("answered");
              card.querySelector(".answer")?.replaceWith(h("p", { class: "muted" }, "No longer waiting."));
            }
          }
          if (task.streaming) task.streaming.classList.remove("streaming");
        }
        updateCancel();
        reloadSessionsSoon();
        if (data.status === "waiting" || task.wasWaiting) refreshInboxCount();
        task.wasWaiting = data.status === "waiting";
        break;
      }
      case "task.result": {
        // The reply is on screen already when it is the result's text: do not repeat it.
        const repeated = taskId && tasks.get(taskId)?.replied === data.text;
        add(
          h(
            "li",
            { class: "result", dataset: { taskId } },
            h("h3", {}, "Result"),
            repeated ? null : h("div", { class: "text" }, renderMarkdown(data.text ?? "")),
            data.files?.length ? fileLinks(agentId, data.files) : null,
            saveForm("Save result to Drive", `results/${taskId}.md`, (path, drive) => save(path, drive, taskId)),
          ),
        );
        break;
      }
      case "context.compacted":
        add(h("li", { class: "note muted" }, "Earlier messages were summarised."));
        break;
      default:
        break;
    }
  }

  async function save(path, drive, taskId = null) {
    const saved = await post(`/v1/sessions/${seg(sessionId)}/save`, { path, drive, ...(taskId ? { task_id: taskId } : {}) });
    const href = drive === "space" ? `#/space/drive?path=${encodeURIComponent(saved.path)}` : `${base}/drive?path=${encodeURIComponent(saved.path)}`;
    return { ...saved, href };
  }

  // --- sending ------------------------------------------------------------------------------
  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = message.value;
    if (!text.trim()) return;
    await busy(
      send,
      async () => {
        if (!sessionId) {
          const created = await post(`/v1/agents/${seg(agentId)}/sessions`, { title: text.trim().slice(0, 80) });
          await post(`/v1/sessions/${seg(created.id)}/messages`, { text });
          message.value = "";
          location.hash = `${base}/sessions/${seg(created.id)}`;
          return;
        }
        await post(`/v1/sessions/${seg(sessionId)}/messages`, { text });
        message.value = "";
      },
      composerError,
    );
  });
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) composer.requestSubmit();
  });
  cancel.addEventListener("click", () =>
    busy(cancel, () => post(`/v1/tasks/${seg(cancel.dataset.taskId)}/cancel`, {}), composerError).then(updateCancel),
  );

  if (!sessionId) {
    replace(titleElement, "New conversation");
    add(h("li", { class: "note muted" }, "Pick a session to resume it, or write a message to start a new one."));
    message.focus();
    return () => controller.abort();
  }

  const session = currentSession ?? (await get(`/v1/sessions/${seg(sessionId)}`));
  replace(titleElement, session.title || "Untitled session");
  headerTools.append(saveForm("Save session to Drive", `sessions/${sessionId}.md`, (path, drive) => save(path, drive)));
  message.focus();

  // The stream: from the last EVENT_WINDOW events; "Load earlier events" starts it again
  // further back, with the log and its state cleared.
  let stream = null;
  let firstAfter = 0;
  const earlier = h("button", { type: "button", class: "small", id: "load-earlier" }, "Load earlier events");
  earlier.addEventListener("click", () => {
    startStream(Math.max(0, firstAfter - EVENT_WINDOW));
    log.scrollTop = 0;
    stuckToBottom = false;
    (log.querySelector("#load-earlier") ?? message).focus();
  });
  function startStream(after) {
    stream?.abort();
    const mine = new AbortController();
    stream = mine;
    firstAfter = after;
    tasks.clear();
    calls.clear();
    questions.clear();
    if (!panel.hidden) hidePanel();
    log.replaceChildren();
    if (after > 0) add(h("li", { class: "note earlier" }, earlier, h("span", { class: "muted" }, " Earlier events are not shown.")));
    followSession(sessionId, {
      after,
      signal: mine.signal,
      onEvent: (event) => {
        if (stream === mine) showEvent(event);
      },
      onState: (state, error) => {
        if (stream !== mine) return; // a stream this page left
        streamState.dataset.state = state;
        streamState.textContent = state === "live" ? "Live" : state === "reconnecting" ? "Reconnecting…" : "";
        if (state === "closed" && error) showError(composerError, error);
      },
    });
  }
  controller.signal.addEventListener("abort", () => stream?.abort());
  startStream(Math.max(0, (session.last_seq ?? 0) - EVENT_WINDOW));
  return () => {
    controller.abort();
    clearTimeout(reloadTimer);
  };
}
