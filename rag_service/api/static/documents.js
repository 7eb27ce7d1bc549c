// The documents panel: index stats, upload of .txt/.md/BEIR .jsonl files in batches that fit the
// server's limits (progress, and each file's result or the server's error as it comes), delete by id.
import { el, json } from "./api.js";

const STATS = [
  ["documents", "documents"],
  ["chunks", "chunks"],
  ["passages", "passages searched"],
  ["vectors", "vectors"],
  ["last_seq", "last write (seq)"],
  ["applied_seq", "applied to the index (seq)"],
  ["rebuilding", "rebuilding"],
];

/** A file's documents, read the way `rag-service ingest` reads files (rag_service/ingestion/corpus.py):
 *  a .txt/.md file is one document (id: its name, title: its first line); a .jsonl line is a BEIR
 *  {"_id", "title", "text"} row. Returns {docs, errors}; a bad line is an error, the rest still go. */
export function documentsOf(name, text) {
  if (/\.(txt|md)$/i.test(name)) {
    if (!text.trim()) return { docs: [], errors: ["the file is empty"] };
    const first = text.trim().split("\n")[0];
    const title = first.replace(/^#+/, "").trim().slice(0, 200) || name.replace(/\.[^.]+$/, "");
    return { docs: [{ id: name, title, text }], errors: [] };
  }
  if (!/\.jsonl$/i.test(name)) return { docs: [], errors: ["not a .txt, .md or .jsonl file"] };
  const docs = [];
  const errors = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let row;
    try {
      row = JSON.parse(line);
    } catch {
      errors.push(`line ${i + 1}: not JSON`);
      return;
    }
    const id = typeof row._id === "number" ? String(row._id) : row._id;
    if (typeof id !== "string" || !id.trim()) errors.push(`line ${i + 1}: missing or empty _id`);
    else if (typeof row.text !== "string" || !row.text.trim()) errors.push(`line ${i + 1}: ${id} has no text`);
    else docs.push({ id, title: typeof row.title === "string" ? row.title : "", text: row.text });
  });
  return { docs, errors };
}

/** An id as the log shows it: long ones cut (the server's message names the field anyway). */
const short = (id) => (id.length > 40 ? `${id.slice(0, 39)}…` : id);

/** Consecutive batches of at most `maxDocs` documents whose JSON body fits in `maxBytes`. */
export function batches(docs, maxDocs, maxBytes) {
  const size = (doc) => new TextEncoder().encode(JSON.stringify(doc)).length + 1;
  const out = [];
  let current = [];
  let bytes = 20; // {"documents":[]}
  for (const doc of docs) {
    const n = size(doc);
    if (current.length && (current.length >= maxDocs || bytes + n > maxBytes)) {
      out.push(current);
      current = [];
      bytes = 20;
    }
    current.push(doc);
    bytes += n;
  }
  if (current.length) out.push(current);
  return out;
}

export class Documents {
  constructor(nodes, config) {
    Object.assign(this, nodes, { config });
    this.refreshButton.addEventListener("click", () => this.refresh());
    this.uploadForm.addEventListener("submit", (e) => {
      e.preventDefault();
      this.upload([...this.files.files]);
    });
    this.deleteForm.addEventListener("submit", (e) => {
      e.preventDefault();
      this.remove(this.deleteId.value.trim());
    });
  }

  async refresh() {
    try {
      const stats = await json("GET", "/v1/index/stats");
      this.stats.replaceChildren(
        ...STATS.flatMap(([key, label]) => [el("dt", label), el("dd", stats[key], key)]),
      );
      this.statsError.hidden = true;
    } catch (err) {
      this.statsError.textContent = `index stats: ${err.message}`;
      this.statsError.hidden = false;
    }
  }

  log(text, kind) {
    const item = el("li", text, kind);
    this.uploadLog.append(item);
    return item;
  }

  async upload(files) {
    if (!files.length) {
      this.uploadStatus.textContent = "choose files first";
      return;
    }
    this.uploadLog.replaceChildren();
    const read = [];
    for (const file of files) {
      const { docs, errors } = documentsOf(file.name, await file.text());
      for (const e of errors) this.log(`${file.name}: ${e}`, "error");
      read.push({ file, docs });
    }
    const total = read.reduce((n, r) => n + r.docs.length, 0);
    let sent = 0;
    this.progress.max = Math.max(total, 1);
    this.progress.value = 0;
    this.progress.hidden = false;
    const { max_batch_docs: maxDocs, max_body_bytes: maxBytes } = this.config;
    for (const { file, docs } of read) {
      const tally = { upserted: 0, unchanged: 0, chunks: 0, failed: 0 };
      for (const batch of batches(docs, maxDocs, Math.floor(maxBytes * 0.95))) {
        const which = batch.length > 1 ? `${short(batch[0].id)} to ${short(batch.at(-1).id)}` : short(batch[0].id);
        try {
          const r = await json("POST", "/v1/documents", { documents: batch });
          tally.upserted += r.upserted;
          tally.unchanged += r.unchanged;
          tally.chunks += r.chunks;
        } catch (err) {
          tally.failed += batch.length;
          this.log(`${file.name} (${which}): ${err.message}`, "error");
        }
        sent += batch.length;
        this.progress.value = sent;
        this.uploadStatus.textContent = `${sent} of ${total} documents sent`;
      }
      if (docs.length > tally.failed) {
        this.log(
          `${file.name}: ${tally.upserted} stored, ${tally.unchanged} unchanged, ${tally.chunks} chunks` +
            (tally.failed ? `, ${tally.failed} failed` : ""),
          "ok",
        );
      }
    }
    this.uploadStatus.textContent = `done: ${sent} of ${total} documents sent`;
    this.refresh();
  }

  async remove(id) {
    if (!id) return;
    try {
      const r = await json("DELETE", `/v1/documents/${encodeURIComponent(id)}`);
      this.deleteResult.textContent = `deleted ${r.deleted} (seq ${r.seq})`;
      this.deleteResult.className = "ok";
    } catch (err) {
      this.deleteResult.textContent = `delete ${id}: ${err.message}`;
      this.deleteResult.className = "error";
    }
    this.refresh();
  }
}
