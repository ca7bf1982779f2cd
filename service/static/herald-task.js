/**
 * herald-task.js: tasks in herald.js: a HeraldTask per task id (state, progress, result,
 * and a `done` promise), kept by the task's task.* events, which may come before the
 * `task` op's ack; the newest TASKS_MAX trackers are kept.
 * @module herald-task
 */
import { HeraldError } from "./herald-util.js";

const TASKS_MAX = 200;        // task trackers kept

/** A task's life as its task.* events tell it. */
export class HeraldTask {
  constructor(id) {
    /** @type {"queued"|"started"|"succeeded"|"failed"} */
    this.state = "queued";
    Object.assign(this, { id, name: null, progress: 0, message: null, result: undefined,
                          error: null, _fns: [] });
    /** Resolves with the result on task.succeeded; rejects (code "task_failed") on task.failed. */
    this.done = new Promise((res, rej) => Object.assign(this, { _resolve: res, _reject: rej }));
    this.done.catch(() => {}); // not an unhandled rejection when nobody awaits it
  }

  /** Call `fn(progress, message, task)` on every report, and now if some came already. */
  onProgress(fn) {
    this._fns.push(fn);
    if (this.progress > 0) fn(this.progress, this.message, this);
    return this;
  }

  _report(progress) {
    this.progress = progress;
    this._fns.forEach((fn) => fn(progress, this.message, this));
  }

  _apply(event, data) {
    if (data.name) this.name = data.name;
    if (this.state === "succeeded" || this.state === "failed") return; // final
    const kind = event.slice("task.".length);
    if (kind === "started" || kind === "progress") this.state = "started";
    if (kind === "progress") {
      this.message = data.message ?? null;
      this._report(data.progress);
    } else if (kind === "succeeded") {
      Object.assign(this, { state: kind, result: data.result });
      this._report(1);
      this._resolve(data.result);
    } else if (kind === "failed") {
      Object.assign(this, { state: kind, error: data.error });
      this._reject(new HeraldError("task_failed", data.error));
    }
  }
}

/** Herald's task methods (herald.js copies them onto Herald.prototype). */
export class TaskMethods {
  /** Start a task; resolves with its HeraldTask (events that beat the ack are kept). */
  async startTask(name, args = {}, { notify = "user" } = {}) {
    const ack = await this.request("task", { name, args, notify });
    const task = this.task(ack.task_id);
    task.name = task.name || name;
    return task;
  }

  /** The tracker of a task id: created on first use or first task.* event for it. */
  task(id) {
    let task = this._tasks.get(id);
    if (!task) {
      this._tasks.set(id, (task = new HeraldTask(id)));
      if (this._tasks.size > TASKS_MAX) this._tasks.delete(this._tasks.keys().next().value);
    }
    return task;
  }
}
