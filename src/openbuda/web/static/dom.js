// DOM helpers. Everything an agent or a user wrote goes into the page as text nodes: `h` takes
// strings as text, never as HTML, and sets attributes one by one (no inline handlers: `on`
// attaches listeners). No module of the UI parses a string as HTML.

/**
 * Build an element: `h("button", {class: "primary", type: "button", on: {click}}, "Save")`.
 * Attribute values are set with setAttribute (`true` sets an empty attribute, `false`/`null`
 * leaves it out); `dataset` and `on` are objects; children are nodes, strings (text nodes),
 * arrays of those, or null/undefined/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [type, listener] of Object.entries(value)) element.addEventListener(type, listener);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name === "value" && "value" in element) {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Append children (see `h`) to `parent`. */
export function append(parent, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace everything in `parent` with `children`. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** A status badge: its class names the status, so the style sheet colours it. */
export function badge(status) {
  return h("span", { class: `badge badge-${String(status).replace(/[^a-z_]/g, "")}` }, status);
}

/** "1.5 MB"-style sizes. */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** A timestamp in the reader's locale. */
export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** An error box (role=alert, so screen readers announce it). */
export function errorBox(error) {
  const box = h("div", { class: "error", role: "alert" }, describeError(error));
  const details = error?.details;
  if (details && typeof details === "object" && Object.keys(details).length > 0) {
    box.append(h("pre", { class: "error-details" }, JSON.stringify(details, null, 2)));
  }
  return box;
}

/** The one line to show for an error: the API's code and message, or the exception's. */
export function describeError(error) {
  if (error?.code) return `${error.message} (${error.code})`;
  return String(error?.message ?? error);
}

/** Show `error` in `slot` (or clear it with null). */
export function showError(slot, error) {
  if (error === null) slot.replaceChildren();
  else replace(slot, errorBox(error));
}

/**
 * Ask for confirmation with a modal <dialog> (keyboard: Tab between the buttons, Escape
 * cancels). Resolves true when the user confirms.
 */
export function confirmDialog(message, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-label": "Confirm" },
      h("p", {}, message),
      h(
        "form",
        { method: "dialog", class: "row" },
        h("button", { value: "cancel", type: "submit" }, "Cancel"),
        h("button", { value: "confirm", type: "submit", class: "danger" }, confirmLabel),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button[value=cancel]").focus();
  });
}

/** Run `action` while `button` shows it is busy; errors go to `slot` when given. */
export async function busy(button, action, slot = null) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    if (slot) showError(slot, null);
    return await action();
  } catch (error) {
    if (slot) showError(slot, error);
    else throw error;
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}
