// The inbox: every task waiting for a person, across the space's agents, answerable in place.

import { listAll, seg } from "./api.js";
import { badge, formatTime, h, replace } from "./dom.js";
import { questionCard } from "./questions.js";

const waiting = () => listAll("/v1/tasks", { query: { status: "waiting" } });

/** The count next to "Inbox" in the navigation. */
export async function refreshInboxCount() {
  const count = document.getElementById("inbox-count");
  try {
    const tasks = await waiting();
    count.textContent = String(tasks.length);
    count.hidden = tasks.length === 0;
    count.setAttribute("aria-label", `${tasks.length} waiting`);
  } catch {
    count.hidden = true;
  }
}

export async function inboxView(main) {
  const list = h("ul", { class: "cards", id: "inbox" });
  const refresh = h("button", { type: "button" }, "Refresh");
  replace(main, h("div", { class: "heading" }, h("h1", {}, "Inbox"), refresh), list);

  const load = async () => {
    const [tasks, agents] = await Promise.all([waiting(), listAll("/v1/agents")]);
    const names = new Map(agents.map((agent) => [agent.id, agent.name]));
    list.replaceChildren();
    if (tasks.length === 0) list.append(h("li", { class: "empty" }, "Nothing is waiting for you."));
    for (const task of tasks) {
      if (!task.question) continue;
      const where = `#/agents/${seg(task.agent_id)}/sessions/${seg(task.session_id)}`;
      const item = h(
        "li",
        { class: "card inbox-item", dataset: { taskId: task.id } },
        h(
          "p",
          { class: "row" },
          h("strong", {}, names.get(task.agent_id) ?? task.agent_id),
          badge(task.status),
          h("a", { href: where }, "Open the session"),
          h("span", { class: "muted" }, formatTime(task.question.asked_at)),
        ),
        questionCard(task.id, task.question, {
          onAnswered: () => {
            item.classList.add("done");
            refreshInboxCount();
          },
        }),
      );
      list.append(item);
    }
  };
  refresh.addEventListener("click", load);
  await load();
}
