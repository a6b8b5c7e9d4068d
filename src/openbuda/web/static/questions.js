// A question an agent asked, with its answer controls: a text box, one button per option, or
// Approve / Deny with an optional note. Used by the workspace and the inbox.

import { post, seg } from "./api.js";
import { busy, h, showError } from "./dom.js";

/**
 * A card for `question` of task `taskId`. `onAnswered(answer)` is called once the API took the
 * answer (202); the card then shows what was answered and its controls go away.
 */
export function questionCard(taskId, question, { onAnswered = () => {} } = {}) {
  const slot = h("div", { class: "error-slot", "aria-live": "polite" });
  const controls = h("div", { class: "answer" });
  const card = h(
    "section",
    { class: `question question-${question.kind}`, "aria-label": "Question", dataset: { questionId: question.id, taskId } },
    h("p", { class: "prompt" }, question.kind === "approval" ? "Approval needed: " : "Question: ", h("strong", {}, question.prompt)),
    question.tool_name && h("p", { class: "muted" }, `Tool: ${question.tool_name}`),
    controls,
    slot,
  );

  const send = async (button, answer) => {
    await busy(
      button,
      async () => {
        await post(`/v1/tasks/${seg(taskId)}/answer`, { question_id: question.id, ...answer });
        markAnswered(card, answer);
        onAnswered(answer);
      },
      slot,
    );
  };

  if (question.kind === "choice") {
    const group = h("div", { class: "row options", role: "group", "aria-label": "Options" });
    for (const option of question.options ?? []) {
      const button = h("button", { type: "button", class: "option" }, option);
      button.addEventListener("click", () => send(button, { choice: option }));
      group.append(button);
    }
    controls.append(group);
  } else if (question.kind === "approval") {
    const noteId = `note-${question.id}`;
    const note = h("input", { id: noteId, name: "note", placeholder: "optional" });
    const approve = h("button", { type: "button", class: "primary approve" }, "Approve");
    const deny = h("button", { type: "button", class: "danger deny" }, "Deny");
    const answer = (approved) => ({ approved, ...(note.value.trim() ? { note: note.value.trim() } : {}) });
    approve.addEventListener("click", () => send(approve, answer(true)));
    deny.addEventListener("click", () => send(deny, answer(false)));
    controls.append(h("div", { class: "field" }, h("label", { for: noteId }, "Note"), note), h("div", { class: "row" }, approve, deny));
  } else {
    const inputId = `answer-${question.id}`;
    const input = h("textarea", { id: inputId, name: "text", rows: 2, required: true });
    const button = h("button", { type: "submit", class: "primary" }, "Answer");
    const form = h("form", {}, h("label", { for: inputId }, "Your answer"), input, h("div", { class: "row" }, button));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value.trim()) send(button, { text: input.value });
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    controls.append(form);
  }
  return card;
}

/** Show on `card` that it was answered (also used when the stream reports an answer). */
export function markAnswered(card, answer) {
  if (card.classList.contains("answered")) return;
  card.classList.add("answered");
  const text =
    answer.choice ?? answer.text ?? (answer.approved === true ? "Approved" : answer.approved === false ? "Denied" : "Answered");
  const note = answer.note ? ` — ${answer.note}` : "";
  card.querySelector(".answer").replaceWith(h("p", { class: "answered-with" }, `Answered: ${text}${note}`));
  showError(card.querySelector(".error-slot"), null);
}
