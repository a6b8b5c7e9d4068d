// Drive: a folder tree (tree.js), a folder's files with a breadcrumb, a file's preview (text, Markdown, images, CSV),
// the editor, uploads with progress, and a file's history with diffs and restore.

import { del, driveBase, drivePathUrl, get, readDriveFile, request, seg, post, uploadDriveFile } from "./api.js";
import { badge, busy, confirmDialog, formatBytes, formatTime, h, replace, showError } from "./dom.js";
import { csvTable, renderMarkdown } from "./markdown.js";
import { folderTree } from "./tree.js";

const IMAGE = /\.(png|jpe?g|gif|webp|svg|bmp|ico|avif)$/i;
const MARKDOWN = /\.(md|markdown)$/i;
const CSV = /\.csv$/i;
const PREVIEW_MAX = 2 * 1024 * 1024;

/** The UI address of a Drive path. */
function href(drive, path) {
  const base = drive.kind === "agent" ? `#/agents/${seg(drive.agentId)}/drive` : "#/space/drive";
  return path ? `${base}?path=${encodeURIComponent(path)}` : base;
}

const parentOf = (path) => (path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "");
const nameOf = (path) => path.slice(path.lastIndexOf("/") + 1);

function breadcrumb(drive, path, title) {
  const parts = path ? path.split("/") : [];
  const items = [h("li", {}, h("a", { href: href(drive, "") }, title))];
  parts.forEach((part, index) => {
    const target = parts.slice(0, index + 1).join("/");
    const last = index === parts.length - 1;
    items.push(h("li", {}, last ? h("span", { "aria-current": "location" }, part) : h("a", { href: href(drive, target) }, part)));
  });
  return h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("ol", {}, items));
}

/** Text of a blob if it is UTF-8 without NULs, else null (binary). */
async function textOf(blob) {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(await blob.arrayBuffer());
    return text.includes("\u0000") ? null : text;
  } catch {
    return null;
  }
}

/** A preview element for a file's content; `urls` collects blob URLs to revoke later. */
async function preview(path, blob, urls) {
  if (IMAGE.test(path)) {
    const url = URL.createObjectURL(blob);
    urls.push(url);
    return h("img", { src: url, alt: nameOf(path), class: "preview-image" });
  }
  if (blob.size > PREVIEW_MAX) return h("p", { class: "muted" }, `Too large to preview (${formatBytes(blob.size)}): download it.`);
  const text = await textOf(blob);
  if (text === null) return h("p", { class: "muted" }, `A binary file (${formatBytes(blob.size)}).`);
  if (MARKDOWN.test(path)) return h("div", { class: "markdown" }, renderMarkdown(text));
  if (CSV.test(path)) return csvTable(text);
  return h("pre", { class: "text-preview" }, text);
}

/** A unified diff, each line classed by its first character. */
function diffView(diff) {
  if (diff.binary) return h("p", { class: "muted" }, "Binary files differ.");
  const lines = diff.diff.split("\n");
  return h(
    "pre",
    { class: "diff" },
    lines.map((line) => {
      const kind = line.startsWith("+++") || line.startsWith("---") ? "head" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "same";
      return h("span", { class: `diff-${kind}` }, `${line}\n`);
    }),
  );
}

/** An id shortened for a table cell (the whole id is in the cell's title). */
function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id;
}

/** Who made a version: text for the cell, and the full ids for its title. */
function actorOf(version) {
  if (version.member_id) return h("span", { title: version.member_id }, `member ${shortId(version.member_id)}`);
  if (version.agent_id) {
    const full = [`agent ${version.agent_id}`, version.task_id && `task ${version.task_id}`, version.session_id && `session ${version.session_id}`];
    const text = `agent ${shortId(version.agent_id)}${version.task_id ? `, task ${shortId(version.task_id)}` : ""}`;
    return h("span", { title: full.filter(Boolean).join(", ") }, text);
  }
  return "—";
}

export async function driveView(main, { drive, path }) {
  const urls = [];
  const base = driveBase(drive);
  let title = "Space Drive";
  if (drive.kind === "agent") title = `${(await get(`/v1/agents/${seg(drive.agentId)}`)).name} — Drive`;

  // Is `path` a folder (it lists) or a file (then its folder lists)?
  let folder = path;
  let file = null;
  let entries;
  try {
    entries = (await get(`${base}/files`, { query: { prefix: folder || undefined } })).items;
  } catch (error) {
    if (error.code !== "not_found" || !path) throw error;
    file = path;
    folder = parentOf(path);
    entries = folder ? (await get(`${base}/files`, { query: { prefix: folder } }).catch(() => ({ items: [] }))).items : (await get(`${base}/files`)).items;
  }

  const listing = h("div", { class: "table-scroll" });
  function drawListing() {
    replace(
      listing,
      h(
        "table",
        { class: "files-table", id: "files" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Size"), h("th", { scope: "col" }, "Version"), h("th", { scope: "col" }, "Updated"))),
        h(
          "tbody",
          {},
          folder ? h("tr", {}, h("td", { colspan: 4 }, h("a", { href: href(drive, parentOf(folder)) }, "↑ Up"))) : null,
          entries.map((entry) =>
            h(
              "tr",
              { class: entry.kind, "aria-selected": entry.path === file ? "true" : null, dataset: { path: entry.path } },
              h("td", {}, h("a", { href: href(drive, entry.path), class: `entry ${entry.kind}` }, entry.kind === "dir" ? `${nameOf(entry.path)}/` : nameOf(entry.path))),
              h("td", {}, formatBytes(entry.size)),
              h("td", {}, entry.kind === "file" ? String(entry.version) : ""),
              h("td", {}, formatTime(entry.updated_at)),
            ),
          ),
          entries.length === 0 ? h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No file here yet.")) : null,
        ),
      ),
    );
  }
  /** List the folder again (after a save or a restore changed a version). */
  async function reloadListing() {
    try {
      entries = (await get(`${base}/files`, { query: { prefix: folder || undefined } })).items;
    } catch (error) {
      if (error.code !== "not_found") throw error;
      entries = [];
    }
    drawListing();
  }
  drawListing();

  // --- upload and new file -----------------------------------------------------------------
  const uploadInput = h("input", { type: "file", id: "upload", name: "upload" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const uploadStatus = h("p", { class: "status", role: "status" });
  const uploadError = h("div", { class: "error-slot", "aria-live": "polite" });
  uploadInput.addEventListener("change", async () => {
    const chosen = uploadInput.files?.[0];
    if (!chosen) return;
    const target = folder ? `${folder}/${chosen.name}` : chosen.name;
    progress.hidden = false;
    progress.value = 0;
    showError(uploadError, null);
    uploadStatus.textContent = `Uploading ${chosen.name}…`;
    try {
      const written = await uploadDriveFile(drive, target, chosen, (sent, total) => {
        progress.max = total;
        progress.value = sent;
      });
      uploadStatus.textContent = `Uploaded ${written.path} (version ${written.version}).`;
      // Show it here (the progress stays visible); the address follows without a reload.
      file = written.path;
      history.replaceState(null, "", href(drive, written.path));
      await Promise.all([reloadListing(), showFile(written.path)]);
    } catch (error) {
      uploadStatus.textContent = "";
      showError(uploadError, error);
    } finally {
      uploadInput.value = "";
    }
  });
  const newName = h("input", { id: "new-file", name: "new-file", placeholder: "notes.md", required: true });
  const newForm = h("form", { class: "row" }, h("label", { for: "new-file" }, "New file"), newName, h("button", { type: "submit" }, "Create"));
  newForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = newName.value.trim();
    if (name) openEditor(folder ? `${folder}/${name}` : name, "", true);
  });

  const filePane = h("section", { class: "file-pane", id: "file-pane", "aria-label": "File" });
  // The folder tree: beside the listing on a wide screen, folded above it at phone width.
  const rootLabel = drive.kind === "agent" ? "/agent" : "/space";
  const folders = h(
    "details",
    { class: "folders", open: matchMedia("(min-width: 900px)").matches },
    h("summary", {}, "Folders"),
    folderTree(drive, folder, (target) => href(drive, target), rootLabel),
  );
  replace(
    main,
    h("div", { class: "heading" }, h("h1", {}, title)),
    breadcrumb(drive, file ?? folder, rootLabel),
    h("div", { class: "drive" }, folders, h("div", { class: "drive-list" }, listing, h("div", { class: "card tools" }, h("div", { class: "field" }, h("label", { for: "upload" }, "Upload a file here"), uploadInput, progress, uploadStatus, uploadError), newForm)), filePane),
  );

  // --- a file: preview, editor, history ----------------------------------------------------
  async function showFile(target, version = null) {
    const { blob, version: shown } = await readDriveFile(drive, target, version ?? undefined);
    const slot = h("div", { class: "error-slot", "aria-live": "polite" });
    const actions = h("div", { class: "row" });
    const editButton = h("button", { type: "button", id: "edit-file" }, "Edit");
    const historyButton = h("button", { type: "button", id: "show-history" }, "History");
    const downloadUrl = URL.createObjectURL(blob);
    urls.push(downloadUrl);
    const download = h("a", { href: downloadUrl, download: nameOf(target), class: "button" }, "Download");
    const remove = h("button", { type: "button", class: "danger", id: "delete-file" }, "Delete");
    actions.append(editButton, historyButton, download, remove);
    const text = await textOf(blob);
    editButton.disabled = text === null;
    editButton.addEventListener("click", () => openEditor(target, text ?? "", false));
    historyButton.addEventListener("click", () => busy(historyButton, () => showHistory(target), slot));
    remove.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete ${target}? Its history stays and it can be restored.`))) return;
      await busy(
        remove,
        async () => {
          await del(`${base}/files/${drivePathUrl(target)}`);
          location.hash = href(drive, parentOf(target));
        },
        slot,
      );
    });
    replace(
      filePane,
      h("h2", { id: "file-name" }, nameOf(target)),
      h("p", { class: "muted", id: "file-version" }, `Version ${shown}${version ? " (an older version)" : ""} · ${formatBytes(blob.size)}`),
      actions,
      slot,
      h("div", { class: "preview", id: "preview" }, await preview(target, blob, urls)),
      h("div", { id: "history" }),
    );
  }

  function openEditor(target, text, isNew) {
    const editor = h("textarea", { id: "editor", name: "content", rows: 18, class: "mono", spellcheck: "false" }, text);
    const save = h("button", { type: "submit", class: "primary", id: "save-file" }, "Save");
    const cancelEdit = h("button", { type: "button" }, "Cancel");
    const slot = h("div", { class: "error-slot", "aria-live": "polite" });
    const form = h("form", { class: "editor" }, h("label", { for: "editor" }, `Editing ${target}`), editor, slot, h("div", { class: "row" }, save, cancelEdit));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      await busy(
        save,
        async () => {
          await request("PUT", `${base}/files/${drivePathUrl(target)}`, { body: editor.value });
          if (isNew) location.hash = href(drive, target);
          else await Promise.all([showFile(target), reloadListing()]);
        },
        slot,
      );
    });
    editor.addEventListener("keydown", (event) => {
      if (event.key === "s" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    cancelEdit.addEventListener("click", () => (isNew ? replace(filePane) : showFile(target)));
    replace(filePane, h("h2", {}, nameOf(target)), form);
    editor.focus();
  }

  async function showHistory(target) {
    const versions = (await get(`${base}/versions/${drivePathUrl(target)}`, { query: { limit: 100 } })).items;
    const latest = versions[0]?.version;
    const diffSlot = h("div", { id: "diff" });
    const slot = h("div", { class: "error-slot", "aria-live": "polite" });
    const rows = versions.map((version) => {
      const view = h("button", { type: "button", class: "small view-version" }, "View");
      const diff = h("button", { type: "button", class: "small diff-version", disabled: version.version === latest || version.op === "delete" }, "Diff to latest");
      const restore = h("button", { type: "button", class: "small restore-version", disabled: version.version === latest || version.op === "delete" }, "Restore");
      view.disabled = version.op === "delete";
      view.addEventListener("click", () => busy(view, () => showFile(target, version.version), slot));
      diff.addEventListener("click", () =>
        busy(
          diff,
          async () => {
            const found = await get(`${base}/diff/${drivePathUrl(target)}`, { query: { from: version.version } });
            replace(diffSlot, h("h3", {}, `Changes from version ${found.from} to ${found.to}`), diffView(found));
          },
          slot,
        ),
      );
      restore.addEventListener("click", () =>
        busy(
          restore,
          async () => {
            await post(`${base}/restore/${drivePathUrl(target)}`, { version: version.version });
            await Promise.all([showFile(target), reloadListing()]);
            await showHistory(target);
          },
          slot,
        ),
      );
      return h(
        "tr",
        { dataset: { version: String(version.version) } },
        h("td", {}, String(version.version)),
        h("td", {}, badge(version.op), version.restored_from ? ` from ${version.restored_from}` : ""),
        h("td", {}, formatTime(version.at)),
        h("td", {}, actorOf(version)),
        h("td", {}, h("div", { class: "row" }, view, diff, restore)),
      );
    });
    replace(
      filePane.querySelector("#history") ?? filePane.appendChild(h("div", { id: "history" })),
      h("h3", {}, "History"),
      slot,
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          { class: "history" },
          h("thead", {}, h("tr", {}, ["Version", "Change", "When", "By", ""].map((name) => h("th", { scope: "col" }, name)))),
          h("tbody", {}, rows),
        ),
      ),
      diffSlot,
    );
  }

  if (file) await showFile(file);
  return () => urls.forEach((url) => URL.revokeObjectURL(url));
}
