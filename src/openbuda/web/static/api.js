// The API client of the UI: the key, JSON requests, event streams read through fetch (so the
// key travels in a header, never in a URL), uploads with progress.

const KEY_ITEM = "openbuda.apiKey";

/** The API key of this browser tab (sessionStorage: gone when the tab closes). */
export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

/** An error answer of the API: `{error: {code, message, details}}`, with the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details ?? {};
  }
}

/** Listeners told when the API refuses the key (401), so the app can sign out. */
const unauthorizedListeners = new Set();
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

function headers(extra = {}) {
  const key = apiKey();
  return { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say
  }
  const error = body?.error;
  if (error?.code) {
    return new ApiError(response.status, error.code, error.message, error.details);
  }
  return new ApiError(response.status, "http_error", `HTTP ${response.status} ${response.statusText}`);
}

async function checked(response) {
  if (response.ok) return response;
  const error = await errorOf(response);
  if (response.status === 401) for (const listener of unauthorizedListeners) listener(error);
  throw error;
}

/**
 * A request to the API. `json` is sent as a JSON body; `body` as it is. Answers the parsed
 * JSON (null for 204), or the Response itself with `raw: true`. Throws `ApiError`.
 */
export async function request(method, path, { json, body, query, raw = false, accept, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const extra = {};
  if (json !== undefined) extra["Content-Type"] = "application/json";
  if (accept) extra.Accept = accept;
  const response = await checked(
    await fetch(url, {
      method,
      headers: headers(extra),
      body: json !== undefined ? JSON.stringify(json) : body,
      signal,
    }),
  );
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, json, options = {}) => request("POST", path, { ...options, json });
export const patch = (path, json, options = {}) => request("PATCH", path, { ...options, json });
export const del = (path, options) => request("DELETE", path, options);

/** A path segment, percent-encoded. */
export const seg = encodeURIComponent;

/** A Drive path in a URL: each segment encoded once, the slashes kept. */
export function drivePathUrl(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

/** The API base of a Drive: `agents/{id}/drive` or `space/drive`. */
export function driveBase(drive) {
  return drive.kind === "agent" ? `/v1/agents/${seg(drive.agentId)}/drive` : "/v1/space/drive";
}

/** Content of a Drive file (a Blob), with the version sent. */
export async function readDriveFile(drive, path, version) {
  const response = await request("GET", `${driveBase(drive)}/files/${drivePathUrl(path)}`, {
    query: { version },
    raw: true,
  });
  return { blob: await response.blob(), version: Number(response.headers.get("x-drive-version")) };
}

/**
 * Upload `body` (a Blob or File) to a Drive path with XMLHttpRequest, whose upload events
 * report progress: `onProgress(sentBytes, totalBytes)`. Resolves with the file entry.
 */
export function uploadDriveFile(drive, path, body, onProgress = () => {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `${driveBase(drive)}/files/${drivePathUrl(path)}`);
    for (const [name, value] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // left null
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1, 1);
        resolve(body);
        return;
      }
      const error = body?.error;
      reject(
        error?.code
          ? new ApiError(xhr.status, error.code, error.message, error.details)
          : new ApiError(xhr.status, "http_error", `HTTP ${xhr.status}`),
      );
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", "the upload failed: network error")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "the upload was cancelled")));
    xhr.send(body);
  });
}

/**
 * An incremental parser of `text/event-stream`: `push(text)` answers the messages completed
 * by that text, each `{id, event, data}` (`id` null when the message had no `id:` line).
 * Comments (heartbeats) produce nothing; CRLF, CR and LF all end lines.
 */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.id = null;
    this.event = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    const messages = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (match === null) break;
      // A lone CR at the very end may be the first half of a CRLF: wait for more text.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const message = this.line(line);
      if (message) messages.push(message);
    }
    return messages;
  }

  line(line) {
    if (line === "") {
      const message = this.data.length > 0 ? { id: this.id, event: this.event || "message", data: this.data.join("\n") } : null;
      this.reset();
      return message;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") this.id = value;
    return null;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Follow a session's events until `signal` aborts: replays the stored ones after `after`, then
 * follows live. A dropped connection is opened again with `Last-Event-ID` = the last seq seen,
 * and stored events are passed on once each, in seq order (a seq at or below the last one is
 * dropped), so a reconnect neither loses nor repeats one. Ephemeral events (no seq) are passed
 * on as they come. `onState("live" | "reconnecting" | "closed", error?)` tells the page.
 * Resolves with the last seq seen when the signal aborts or the API refuses the stream.
 */
export async function followSession(sessionId, { after = 0, onEvent, onState = () => {}, signal, fetchImpl }) {
  let lastSeq = after;
  let delay = 250;
  const doFetch = fetchImpl ?? ((...args) => fetch(...args));
  while (!signal?.aborted) {
    try {
      const response = await doFetch(`/v1/sessions/${seg(sessionId)}/events/stream`, {
        headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(lastSeq) }),
        signal,
        cache: "no-store",
      });
      if (!response.ok) {
        const error = await errorOf(response);
        if (response.status >= 400 && response.status < 500 && response.status !== 429) {
          onState("closed", error);
          return lastSeq; // the session is gone, or the key: retrying will not help
        }
        throw error;
      }
      onState("live");
      delay = 250;
      const parser = new SseParser();
      const decoder = new TextDecoder();
      // Read the body itself (no pipe): what arrived before a drop is handled, then the drop.
      const reader = response.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const message of parser.push(decoder.decode(value, { stream: true }))) {
          let event;
          try {
            event = JSON.parse(message.data);
          } catch {
            continue; // not ours
          }
          if (message.id !== null) {
            const seq = Number(message.id);
            if (!Number.isInteger(seq) || seq <= lastSeq) continue;
            lastSeq = seq;
          }
          onEvent(event);
        }
      }
    } catch (error) {
      if (signal?.aborted) break;
      onState("reconnecting", error);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 5000);
      continue;
    }
    // The server ended the stream (it restarted, say): open it again after a breath.
    if (!signal?.aborted) {
      onState("reconnecting", null);
      await sleep(delay, signal);
    }
  }
  onState("closed", null);
  return lastSeq;
}

/** Every item of a list route, following `next_cursor` up to `max` items. */
export async function listAll(path, { query = {}, max = 1000 } = {}) {
  const items = [];
  let cursor;
  do {
    const page = await get(path, { query: { ...query, limit: 200, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
