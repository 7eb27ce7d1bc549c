// The page's start: its config (/page/config), the server's readiness and budgets (/readyz), the
// API key prompt, then the chat and the documents panel.
import { apiKey, setApiKey } from "./api.js";
import { Chat } from "./chat.js";
import { Documents } from "./documents.js";

const $ = (id) => document.getElementById(id);
let budgets = null;

async function pollReadiness() {
  const badge = $("readiness");
  try {
    const r = await fetch("/readyz");
    const body = await r.json();
    budgets = body.budgets_ms || budgets;
    badge.textContent = body.status === "ready" ? "ready" : `${body.status}${body.reason ? `: ${body.reason}` : ""}`;
    badge.className = `badge ${body.status === "ready" ? "ok" : "warn"}`;
    if (body.status === "ready") return;
  } catch (err) {
    badge.textContent = `unreachable: ${err.message}`;
    badge.className = "badge error";
  }
  setTimeout(pollReadiness, 3000);
}

function keyPrompt() {
  const dialog = $("key-dialog");
  const input = $("api-key");
  const open = () => {
    if (dialog.open) return;
    input.value = apiKey();
    dialog.showModal();
    input.focus();
  };
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") setApiKey(input.value.trim());
    $("key-button").textContent = apiKey() ? "API key (set)" : "API key";
  });
  $("key-button").addEventListener("click", open);
  return open;
}

async function start() {
  const config = await (await fetch("/page/config")).json();
  const askForKey = keyPrompt();
  $("key-button").hidden = !config.auth_required;
  if (config.auth_required) {
    window.addEventListener("rag:unauthorized", askForKey);
    if (!apiKey()) askForKey();
  }
  await pollReadiness();
  new Chat(
    { list: $("conversation"), form: $("ask-form"), question: $("question"), stop: $("stop"), newChat: $("new-chat") },
    config,
    () => budgets,
  );
  const documents = new Documents(
    {
      stats: $("stats"),
      statsError: $("stats-error"),
      refreshButton: $("refresh-stats"),
      uploadForm: $("upload-form"),
      files: $("files"),
      progress: $("upload-progress"),
      uploadStatus: $("upload-status"),
      uploadLog: $("upload-log"),
      deleteForm: $("delete-form"),
      deleteId: $("delete-id"),
      deleteResult: $("delete-result"),
    },
    config,
  );
  documents.refresh();
  document.body.dataset.ready = "true";
}

start();
