// The Drive's folder tree. A folder's subfolders load when it is first expanded (one listing
// of `GET …/files?prefix=`, its `dir` entries), so a large Drive costs nothing up front. The
// folders a user opened stay open in this tab while they move around the Drive; the current
// folder's ancestors always open. Keyboard: Tab/Enter as links and buttons, and in the tree
// ArrowUp/ArrowDown move between folders, ArrowRight expands (then steps into), ArrowLeft
// collapses (then steps out), Home/End go to the first/last folder shown.

import { driveBase, get } from "./api.js";
import { describeError, h, replace } from "./dom.js";

/** The folders expanded in this tab, per Drive (its API base): kept across screens. */
const expandedByDrive = new Map();

const nameOf = (path) => path.slice(path.lastIndexOf("/") + 1);

/** Every ancestor of `path` with itself ("a/b" → ["a", "a/b"]). */
function chain(path) {
  const parts = path ? path.split("/") : [];
  return parts.map((_part, index) => parts.slice(0, index + 1).join("/"));
}

/**
 * The tree of `drive`'s folders as a <nav>; `current` is the folder shown, `href(path)` the
 * UI address of a folder, `rootLabel` the name of the Drive's root.
 */
export function folderTree(drive, current, href, rootLabel) {
  const base = driveBase(drive);
  if (!expandedByDrive.has(base)) expandedByDrive.set(base, new Set());
  const expanded = expandedByDrive.get(base);
  for (const path of ["", ...chain(current).slice(0, -1)]) expanded.add(path);
  let ids = 0;

  function node(path, label) {
    const children = h("ul", { role: "group", class: "tree-children", id: `tree-${(ids += 1)}`, hidden: true });
    const toggle = h("button", { type: "button", class: "tree-toggle", "aria-expanded": "false", "aria-controls": children.id, "aria-label": `Subfolders of ${label}` });
    const link = h("a", { href: href(path), class: "tree-link", "aria-current": path === current ? "location" : null }, label);
    const item = h("li", { class: "tree-node", dataset: { path } }, h("div", { class: "tree-row" }, toggle, link), children);
    let loaded = false;

    async function load() {
      loaded = true;
      replace(children, h("li", { class: "muted tree-note" }, "Loading…"));
      try {
        const entries = (await get(`${base}/files`, { query: { prefix: path || undefined } })).items;
        const folders = entries.filter((entry) => entry.kind === "dir" && !entry.deleted);
        replace(children, folders.length ? folders.map((entry) => node(entry.path, nameOf(entry.path))) : h("li", { class: "muted tree-note" }, "No subfolder."));
      } catch (error) {
        loaded = false; // try again on the next expand
        replace(children, h("li", { class: "error tree-note", role: "alert" }, describeError(error)));
      }
    }

    item.expand = (open) => {
      toggle.setAttribute("aria-expanded", String(open));
      children.hidden = !open;
      if (open) expanded.add(path);
      else expanded.delete(path);
      if (open && !loaded) load();
    };
    item.isExpanded = () => toggle.getAttribute("aria-expanded") === "true";
    toggle.addEventListener("click", () => item.expand(!item.isExpanded()));
    if (expanded.has(path)) item.expand(true);
    return item;
  }

  const root = node("", rootLabel);
  const nav = h("nav", { class: "tree", "aria-label": "Folders" }, h("ul", { class: "tree-root" }, root));

  /** The folder links a user can see now, in order. */
  const visibleLinks = () => [...nav.querySelectorAll("a.tree-link")].filter((link) => !link.closest("ul[hidden]"));
  nav.addEventListener("keydown", (event) => {
    const item = event.target.closest?.(".tree-node");
    if (!item || event.altKey || event.ctrlKey || event.metaKey) return;
    const link = item.querySelector(":scope > .tree-row > a.tree-link");
    const links = visibleLinks();
    const at = links.indexOf(link);
    let target = null;
    switch (event.key) {
      case "ArrowDown":
        target = links[at + 1];
        break;
      case "ArrowUp":
        target = links[at - 1];
        break;
      case "Home":
        target = links[0];
        break;
      case "End":
        target = links[links.length - 1];
        break;
      case "ArrowRight":
        if (!item.isExpanded()) item.expand(true);
        else target = item.querySelector(":scope > ul a.tree-link");
        if (!target) target = link;
        break;
      case "ArrowLeft":
        if (item.isExpanded()) item.expand(false);
        else target = item.parentElement.closest(".tree-node")?.querySelector(":scope > .tree-row > a.tree-link");
        if (!target) target = link;
        break;
      default:
        return;
    }
    event.preventDefault();
    target?.focus();
  });
  return nav;
}
