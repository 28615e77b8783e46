// One small event emitter for the page modules (the signaling client, the mesh, the quality
// board, the fallback view). DOM-free, like signaling.js, which uses it. devices.js keeps its
// own three lines: it is early.js's only import and must import nothing itself.

export class Emitter {
  /**
   * @param {string} name who emits, for the console when a handler fails
   * @param {string[]|null} [types] the only event types there are (others are refused on `on`),
   *   or null for any type (the signaling client hands on every server message type)
   */
  constructor(name, types = null) {
    this.name = name;
    this.types = types ? new Set(types) : null;
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * Call `handler` with each `type` event's payload.
   * @param {string} type @param {Function} handler
   * @returns {() => void} unsubscribe
   */
  on(type, handler) {
    if (this.types && !this.types.has(type)) throw new Error(`${this.name} has no '${type}' event`);
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => { this._handlers.get(type)?.delete(handler); };
  }

  /** Hand `payload` to every handler of `type`, in the order they came. */
  emit(type, payload) {
    for (const handler of this._handlers.get(type) ?? []) {
      try {
        handler(payload);
      } catch (error) {
        // One broken handler must not stop the others, nor the module that emits.
        console.error(`${this.name} handler for ${type} failed`, error);
      }
    }
  }
}
