// The UI's entry point: sign in, the navigation, and a hash router over the screens.
//
//   #/agents                          agents (list, create)
//   #/agents/{id}/edit                edit an agent
//   #/agents/{id}[/sessions/{sid}]    the agent's workspace (sessions and chat)
//   #/agents/{id}/drive?path=…        the agent's Drive
//   #/agents/{id}/computer            the agent's computer
//   #/space/drive?path=…              the Space Drive
//   #/inbox                           every waiting task

import { apiKey, get, onUnauthorized, setApiKey } from "./api.js";
import { busy, h, replace, showError } from "./dom.js";
import { agentsView, editAgentView } from "./agents.js";
import { computerView } from "./computer.js";
import { driveView } from "./drive.js";
import { inboxView, refreshInboxCount } from "./inbox.js";
import { workspaceView } from "./workspace.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let cleanup = null;
let signingIn = false; // a 401 then means a wrong key, which the form shows

function route() {
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(search);
  if (parts[0] === "inbox") return { section: "inbox", view: inboxView, params: {} };
  if (parts[0] === "space" && parts[1] === "drive") {
    return { section: "drive", view: driveView, params: { drive: { kind: "space" }, path: query.get("path") ?? "" } };
  }
  if (parts[0] === "agents" && parts[1]) {
    const agentId = parts[1];
    if (parts[2] === "edit") return { section: "agents", view: editAgentView, params: { agentId } };
    if (parts[2] === "drive") {
      return { section: "agents", view: driveView, params: { drive: { kind: "agent", agentId }, path: query.get("path") ?? "" } };
    }
    if (parts[2] === "computer") return { section: "agents", view: computerView, params: { agentId } };
    return { section: "agents", view: workspaceView, params: { agentId, sessionId: parts[2] === "sessions" ? parts[3] : null } };
  }
  return { section: "agents", view: agentsView, params: {} };
}

async function render() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  if (!apiKey()) {
    nav.hidden = true;
    replace(document.getElementById("who"));
    signInView();
    return;
  }
  if (nav.hidden) showWho();
  nav.hidden = false;
  const { section, view, params } = route();
  for (const link of nav.querySelectorAll("a[data-section]")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  try {
    cleanup = (await view(main, params)) ?? null;
  } catch (error) {
    replace(main, h("h1", {}, "Something went wrong"));
    const slot = h("div");
    main.append(slot);
    showError(slot, error);
  }
  refreshInboxCount();
}

function signInView() {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
  });
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title" }, "Sign in"),
    h("p", {}, "Paste an API key. It stays in this tab only (session storage) and is sent with every request."),
    h("label", { for: "api-key" }, "API key"),
    input,
    slot,
    h("div", { class: "row" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    await busy(
      button,
      async () => {
        setApiKey(key);
        signingIn = true;
        try {
          await get("/v1/me");
        } catch (error) {
          setApiKey(null);
          throw error;
        } finally {
          signingIn = false;
        }
        await render();
      },
      slot,
    );
  });
  replace(main, form);
  input.focus();
}

async function showWho() {
  try {
    const me = await get("/v1/me");
    replace(document.getElementById("who"), `${me.member.name} · ${me.space.name} (${me.role})`);
  } catch {
    // the views show errors; this is decoration
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  setApiKey(null);
  location.hash = "#/agents";
  render();
});

onUnauthorized(() => {
  // The key was revoked or expired: back to the sign-in form.
  if (signingIn) return;
  setApiKey(null);
  render();
});

window.addEventListener("hashchange", () => {
  render();
  main.focus({ preventScroll: true });
});

render();
