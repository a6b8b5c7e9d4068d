// An agent's computer: status, CPU, memory, disk and ports (refreshed every few seconds),
// sleep / wake / restart, and preview links (signed, so a new tab opens them without the key).

import { get, post, seg } from "./api.js";
import { badge, busy, formatBytes, h, replace, showError } from "./dom.js";

const REFRESH_MS = 5000;

export async function computerView(main, { agentId }) {
  const agent = await get(`/v1/agents/${seg(agentId)}`);
  const path = `/v1/agents/${seg(agentId)}/computer`;
  const facts = h("dl", { class: "facts", id: "computer-status" });
  const ports = h("ul", { class: "ports", id: "ports" });
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const actions = h("div", { class: "row" });

  function draw(status) {
    replace(
      facts,
      h("dt", {}, "State"),
      h("dd", {}, badge(status.status)),
      h("dt", {}, "CPU"),
      h("dd", {}, `${status.cpu_percent.toFixed(1)} %`),
      h("dt", {}, "Memory"),
      h("dd", {}, formatBytes(status.memory_bytes)),
      h("dt", {}, "Disk (/agent)"),
      h("dd", {}, `${formatBytes(status.disk_bytes)} in ${status.file_count} files`),
      h("dt", {}, "Sleeps after"),
      h("dd", {}, `${Math.round(status.sleep_timeout_s / 60)} min idle`),
    );
    ports.replaceChildren();
    if (status.ports.length === 0) ports.append(h("li", { class: "muted" }, "No program listens on a port."));
    for (const port of status.ports) {
      const open = h("button", { type: "button", class: "preview-link" }, `Open port ${port}`);
      const linkSlot = h("span");
      open.addEventListener("click", () =>
        busy(
          open,
          async () => {
            // Previews share this page's origin: a tab opened with an opener would get a copy
            // of this tab's sessionStorage (the API key) that the agent's page could read. So
            // the tab opens with "noopener" (its own, empty storage) once the link is signed;
            // when a popup blocker stops it, the link below opens it the same way.
            const link = await post(`${path}/ports/${port}/link`, {});
            window.open(link.url, "_blank", "noopener,noreferrer");
            replace(linkSlot, " ", h("a", { href: link.url, target: "_blank", rel: "noopener noreferrer" }, "signed link"), ` (until ${new Date(link.expires_at).toLocaleTimeString()})`);
          },
          slot,
        ),
      );
      ports.append(h("li", {}, open, linkSlot));
    }
  }

  async function refresh() {
    try {
      draw(await get(path));
      showError(slot, null);
    } catch (error) {
      showError(slot, error);
    }
  }

  for (const [action, label] of [
    ["wake", "Wake"],
    ["sleep", "Sleep"],
    ["restart", "Restart"],
  ]) {
    const button = h("button", { type: "button", id: `computer-${action}`, class: action === "restart" ? "danger" : null }, label);
    button.addEventListener("click", () => busy(button, async () => draw(await post(`${path}/${action}`, {})), slot));
    actions.append(button);
  }

  replace(
    main,
    h("div", { class: "heading" }, h("h1", {}, `${agent.name} — Computer`), h("a", { href: `#/agents/${seg(agentId)}` }, "Back to the workspace")),
    h("section", { class: "card", "aria-label": "Status" }, facts, actions, slot),
    h("section", { class: "card", "aria-labelledby": "ports-title" }, h("h2", { id: "ports-title" }, "Ports"), ports),
  );
  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
