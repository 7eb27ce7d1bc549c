// Talking to the server: the API key, JSON requests, the server's error message, reading SSE.

const KEY_STORAGE = "rag-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** An HTTP error with the server's own words: "401 authentication_error: invalid API key". */
export class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    const text = err ? `${err.type || "error"}: ${err.message}` : String(body || "no body");
    super(`${status} ${text}`);
    this.status = status;
  }
}

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const key = apiKey();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (a proxy's page): shown as it came
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("rag:unauthorized"));
  return new ApiError(response.status, body);
}

/** A request whose answer is the response itself (for streams); throws ApiError when not 2xx. */
export async function send(method, path, body, signal) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** A JSON request; returns the parsed body. */
export async function json(method, path, body) {
  return (await send(method, path, body)).json();
}

/** The JSON payloads of a Server-Sent Events body, until `data: [DONE]` or the end. */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

/** A new element with its text set as text (never parsed as HTML), and optional class. */
export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}
