// One conversation over /v1/chat/completions (streamed): the server keeps no history, the page sends
// it with every question. Each answer shows its text as it streams, then its sources, a timing bar
// and badges (degraded, retrieval fallback, stopped, error).
import { el, events, send } from "./api.js";
import { timingBar } from "./timing.js";

export class Chat {
  constructor({ list, form, question, stop, newChat }, config, budgets) {
    Object.assign(this, { list, form, question, stopButton: stop, config, budgets });
    this.messages = [];
    this.controller = null;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.ask();
    });
    question.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.controller) this.stop();
    });
    stop.addEventListener("click", () => this.stop());
    newChat.addEventListener("click", () => {
      this.stop();
      this.messages = [];
      this.list.replaceChildren();
      this.question.focus();
    });
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  async ask() {
    const text = this.question.value.trim();
    if (!text || this.controller) return;
    this.question.value = "";
    this.messages.push({ role: "user", content: text });
    const turn = new Turn(this.list, text);
    this.controller = new AbortController();
    this.stopButton.disabled = false;
    let answer = "";
    try {
      const response = await send(
        "POST",
        "/v1/chat/completions",
        { model: this.config.model, messages: this.messages, stream: true },
        this.controller.signal,
      );
      turn.setRequestId(response.headers.get("x-request-id"));
      for await (const chunk of events(response)) {
        if (chunk.error) throw new Error(`${chunk.error.type}: ${chunk.error.message}`);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          turn.appendText(choice.delta.content);
        }
        if (choice.finish_reason) turn.finish(chunk, this.budgets());
      }
      this.messages.push({ role: "assistant", content: answer });
    } catch (err) {
      if (err.name === "AbortError") turn.badge("stopped", "stopped: generation aborted");
      else turn.badge("error", err.message);
      // What was shown stays in the history (a follow-up may refer to it); a question that got no
      // answer at all is dropped, so the next one is not a second user turn in a row.
      if (answer) this.messages.push({ role: "assistant", content: answer });
      else this.messages.pop();
    } finally {
      turn.done();
      this.controller = null;
      this.stopButton.disabled = true;
      this.question.focus();
    }
  }
}

/** One question and its answer in the conversation list. */
class Turn {
  constructor(list, question) {
    this.item = el("li", undefined, "turn streaming");
    this.item.setAttribute("aria-busy", "true"); // read out once whole, not token by token
    this.item.append(el("p", question, "question"));
    this.answer = el("div", undefined, "answer");
    this.text = el("p", "", "text");
    this.badges = el("p", undefined, "badges");
    this.answer.append(this.text, this.badges);
    this.item.append(this.answer);
    list.append(this.item);
    this.item.scrollIntoView({ block: "end" });
  }

  setRequestId(id) {
    if (id) this.item.dataset.requestId = id;
  }

  appendText(text) {
    this.text.append(document.createTextNode(text));
  }

  badge(kind, text) {
    this.badges.append(el("span", text, `badge ${kind}`));
  }

  finish(chunk, budgets) {
    if (chunk.degraded) {
      // Its stage's budget or the request's deadline ran out: the text so far is the answer.
      this.badge("degraded", `degraded: the ${chunk.degraded_reason} stage ran out of time, the answer is cut short`);
    }
    const retrieval = chunk.retrieval;
    if (retrieval && retrieval.fallback) {
      this.badge("fallback", `retrieval fallback: ${retrieval.fallback} list only (${retrieval.reason})`);
    }
    if (chunk.timings_ms) this.answer.append(timingBar(chunk.timings_ms, budgets));
    if (chunk.sources) this.answer.append(sourcesList(chunk.sources));
  }

  done() {
    this.item.removeAttribute("aria-busy");
    this.item.classList.remove("streaming");
    this.item.classList.add("finished");
  }
}

function retrieversText(retrievers) {
  const entries = Object.entries(retrievers || {});
  return entries.length ? entries.map(([name, rank]) => `${name} #${rank}`).join(", ") : "";
}

/** The sources: title, id, score and retrievers in a summary; the passage when it is opened. */
function sourcesList(sources) {
  const box = el("section", undefined, "sources");
  box.append(el("h3", `Sources (${sources.length})`));
  const list = el("ol");
  for (const s of sources) {
    const item = el("li", undefined, "source");
    item.dataset.id = s.id;
    const passage = el("details");
    const summary = el("summary");
    summary.append(
      el("span", s.title || s.doc_id, "title"),
      " ",
      el("code", s.id, "id"),
      " ",
      el("span", `score ${Number(s.score).toFixed(3)}`, "score"),
      " ",
      el("span", retrieversText(s.retrievers), "retrievers"),
    );
    passage.append(summary, el("p", s.text, "passage"));
    item.append(passage);
    list.append(item);
  }
  box.append(list);
  return box;
}
