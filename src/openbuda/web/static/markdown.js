// Markdown and CSV to DOM nodes, safely: the text only ever becomes text nodes, and the only
// attribute taken from the text is a link's href, kept when it is http(s) or mailto.
// The Markdown covered: headings, paragraphs, lists, block quotes, fenced code, rules,
// inline code, **strong**, *em*, [links](url). Anything else stays as plain text.

import { h } from "./dom.js";

const SAFE_URL = /^(https?:|mailto:)/i;

/** Inline Markdown to nodes. */
export function inline(text) {
  const nodes = [];
  const pattern = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\(([^)\s]+)\)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) nodes.push(text.slice(last, match.index));
    last = match.index + match[0].length;
    if (match[1]) nodes.push(h("code", {}, match[2].trim()));
    else if (match[3] || match[4]) nodes.push(h("strong", {}, inline(match[3] ?? match[4])));
    else if (match[5] || match[6]) nodes.push(h("em", {}, inline(match[5] ?? match[6])));
    else if (match[7]) {
      const href = match[8];
      nodes.push(
        SAFE_URL.test(href)
          ? h("a", { href, rel: "noopener noreferrer nofollow", target: "_blank" }, inline(match[7]))
          : match[0],
      );
    }
  }
  if (last < text.length) nodes.push(text.slice(last));
  return nodes;
}

/** A Markdown document to a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  const paragraph = [];
  const flush = () => {
    if (paragraph.length) fragment.append(h("p", {}, inline(paragraph.join(" "))));
    paragraph.length = 0;
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^(```|~~~)\s*([\w+-]*)\s*$/.exec(line);
    if (fence) {
      flush();
      const code = [];
      i += 1;
      while (i < lines.length && !lines[i].startsWith(fence[1])) code.push(lines[i++]);
      i += 1;
      fragment.append(h("pre", {}, h("code", fence[2] ? { "data-lang": fence[2] } : {}, code.join("\n"))));
      continue;
    }
    const heading = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flush();
      fragment.append(h(`h${heading[1].length}`, {}, inline(heading[2])));
      i += 1;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      fragment.append(h("hr"));
      i += 1;
      continue;
    }
    if (/^\s*>/.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      fragment.append(h("blockquote", {}, renderMarkdown(quoted.join("\n"))));
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = h(ordered ? "ol" : "ul");
      while (i < lines.length) {
        const next = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(lines[i]);
        if (!next || /\d/.test(next[1]) !== ordered) break;
        list.append(h("li", {}, inline(next[2])));
        i += 1;
      }
      fragment.append(list);
      continue;
    }
    if (line.trim() === "") flush();
    else paragraph.push(line.trim());
    i += 1;
  }
  flush();
  return fragment;
}

/** CSV (RFC 4180: quoted fields, doubled quotes, newlines in quotes) to rows of strings. */
export function parseCsv(text, maxRows = 1000) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length && rows.length < maxRows; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i += 1;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if ((field !== "" || row.length > 0) && rows.length < maxRows) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

/** CSV rows as a table, the first row as its header. */
export function csvTable(text) {
  const [head = [], ...body] = parseCsv(text);
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { class: "csv" },
      h("thead", {}, h("tr", {}, head.map((cell) => h("th", { scope: "col" }, cell)))),
      h("tbody", {}, body.map((row) => h("tr", {}, row.map((cell) => h("td", {}, cell))))),
    ),
  );
}
