// Agents: the list (with delete, after a confirmation), the create form and the edit form
// (instructions, model, settings as JSON).

import { del, get, listAll, patch, post, seg } from "./api.js";
import { busy, confirmDialog, h, replace } from "./dom.js";

/** The fields of an agent form; `agent` fills them in for editing. */
function agentFields(agent = null) {
  const field = (id, label, control, hint = null) =>
    h("div", { class: "field" }, h("label", { for: id }, label), control, hint && h("small", { id: `${id}-hint` }, hint));
  const name = h("input", { id: "agent-name", name: "name", required: true, maxlength: 100, value: agent?.name ?? "" });
  const description = h("input", { id: "agent-description", name: "description", maxlength: 2000, value: agent?.description ?? "" });
  const model = h("input", { id: "agent-model", name: "model", placeholder: "the server's default", value: agent?.model ?? "" });
  const instructions = h("textarea", { id: "agent-instructions", name: "instructions", rows: 6 }, agent?.instructions ?? "");
  const settings = h(
    "textarea",
    { id: "agent-settings", name: "settings", rows: 8, class: "mono", spellcheck: "false", "aria-describedby": "agent-settings-hint" },
    agent ? JSON.stringify(agent.settings, null, 2) : "{}",
  );
  return {
    controls: { name, description, model, instructions, settings },
    nodes: [
      field("agent-name", "Name", name),
      field("agent-description", "Description", description),
      field("agent-model", "Model", model, "provider:model, e.g. openai:gpt-4o-mini; empty for the server's default"),
      field("agent-instructions", "Instructions", instructions),
      field(
        "agent-settings",
        "Settings (JSON)",
        settings,
        'e.g. {"approval_tools": ["shell"], "max_steps": 20, "network": "none"}',
      ),
    ],
  };
}

/** The body of a create or update from the form; throws a readable error for bad JSON. */
function agentBody(controls) {
  let settings = {};
  const text = controls.settings.value.trim();
  if (text) {
    try {
      settings = JSON.parse(text);
    } catch (error) {
      throw Object.assign(new Error(`Settings are not valid JSON: ${error.message}`), { code: "invalid_json" });
    }
    if (settings === null || typeof settings !== "object" || Array.isArray(settings)) {
      throw Object.assign(new Error("Settings must be a JSON object"), { code: "invalid_json" });
    }
  }
  return {
    name: controls.name.value.trim(),
    description: controls.description.value,
    instructions: controls.instructions.value,
    model: controls.model.value.trim() || null,
    settings,
  };
}

/**
 * An agent's card. Delete is offered to every role: the API decides (admins and owners may)
 * and its refusal shows in the card, so the page never guesses at permissions.
 */
function agentRow(agent, onDeleted) {
  const base = `#/agents/${seg(agent.id)}`;
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const remove = h("button", { type: "button", class: "small danger delete-agent", "aria-label": `Delete ${agent.name}` }, "Delete");
  remove.addEventListener("click", async () => {
    const question = `Delete the agent “${agent.name}” with its sessions, its Drive and its computer? This cannot be undone.`;
    if (!(await confirmDialog(question, "Delete agent"))) return;
    await busy(
      remove,
      async () => {
        await del(`/v1/agents/${seg(agent.id)}`);
        onDeleted(agent);
      },
      slot,
    );
  });
  return h(
    "li",
    { class: "card agent", dataset: { agentId: agent.id } },
    h("h2", {}, h("a", { href: base }, agent.name)),
    agent.description && h("p", {}, agent.description),
    h("p", { class: "muted" }, `Model: ${agent.model ?? "server default"}`),
    h(
      "nav",
      { class: "row links", "aria-label": `${agent.name}` },
      h("a", { href: base }, "Workspace"),
      h("a", { href: `${base}/drive` }, "Drive"),
      h("a", { href: `${base}/computer` }, "Computer"),
      h("a", { href: `${base}/edit` }, "Edit"),
      remove,
    ),
    slot,
  );
}

export async function agentsView(main) {
  const list = h("ul", { class: "cards", id: "agents" });
  const { controls, nodes } = agentFields();
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "primary" }, "Create agent");
  const form = h("form", { class: "card", id: "create-agent", "aria-labelledby": "create-title" }, h("h2", { id: "create-title" }, "New agent"), nodes, slot, h("div", { class: "row" }, button));
  const details = h("details", { class: "create" }, h("summary", {}, "New agent"), form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await busy(
      button,
      async () => {
        const agent = await post("/v1/agents", agentBody(controls));
        location.hash = `#/agents/${seg(agent.id)}`;
      },
      slot,
    );
  });
  replace(main, h("div", { class: "heading" }, h("h1", {}, "Agents")), details, list);
  const status = h("p", { class: "status", role: "status", id: "agents-status" });
  list.before(status);
  const agents = await listAll("/v1/agents");
  const showEmpty = () => {
    if (list.children.length > 0) return;
    details.open = true;
    list.append(h("li", { class: "empty" }, "No agent yet: create one."));
  };
  const onDeleted = (agent) => {
    list.querySelector(`[data-agent-id="${CSS.escape(agent.id)}"]`)?.remove();
    status.textContent = `Deleted ${agent.name}.`;
    showEmpty();
    list.querySelector(".delete-agent")?.focus();
  };
  for (const agent of agents) list.append(agentRow(agent, onDeleted));
  showEmpty();
}

export async function editAgentView(main, { agentId }) {
  const agent = await get(`/v1/agents/${seg(agentId)}`);
  const { controls, nodes } = agentFields(agent);
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const status = h("p", { class: "status", role: "status" });
  const button = h("button", { type: "submit", class: "primary" }, "Save");
  const form = h("form", { class: "card", id: "edit-agent" }, nodes, slot, status, h("div", { class: "row" }, button, h("a", { href: `#/agents/${seg(agentId)}` }, "Back to the workspace")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    await busy(
      button,
      async () => {
        const saved = await patch(`/v1/agents/${seg(agentId)}`, agentBody(controls));
        controls.settings.value = JSON.stringify(saved.settings, null, 2);
        status.textContent = `Saved at ${new Date(saved.updated_at).toLocaleTimeString()}.`;
      },
      slot,
    );
  });
  replace(main, h("h1", {}, `Edit ${agent.name}`), form);
}

