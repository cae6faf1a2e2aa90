/**
 * A connection's object cache: the identity map (one oid -> one object) and the list of
 * loaded objects in least-recently-used order.
 *
 * Invariants:
 * - Every object of the connection that has an oid is in `#strong` or in `#weak` (never
 *   both). `#weak` holds ghosts through WeakRefs: a ghost the application no longer
 *   references can be collected, and a new object made later for its oid is then the only
 *   one in existence (identity is never doubled).
 * - `#strong` holds loaded objects and recently made ghosts (a nursery). A WeakRef costs
 *   several times a Map entry, and most ghosts are loaded soon after they are made (a
 *   traversal), so ghosts move to `#weak` only when they are evicted or when the nursery
 *   outgrows its bound (`#demoteGhosts`), which keeps memory bounded.
 * - The LRU list (`#head` … `#tail`, linked through each object's Meta) holds every object
 *   whose state is in memory (saved or changed), strongly, least recently used first
 *   (use = load, change, commit); its length and `#bytes` are what `cacheSize` and
 *   `cacheBytes` bound. A linked list makes touching and evicting O(1) (a Map's insertion
 *   order degrades when entries are deleted at its front over and over).
 * - Only unchanged objects are evicted; the connection decides what "unchanged" means
 *   (it dirty-checks candidates) through the `evict` callback.
 */
import { metaOf, type Meta, type Persistent } from "../persistent/persistent.ts";
import type { Oid } from "../storage/storage.ts";

export class ObjectCache {
  #strong = new Map<Oid, Persistent>();
  #weak = new Map<Oid, WeakRef<Persistent>>();
  #sweepAt = 1024;
  #head: Meta | null = null;
  #tail: Meta | null = null;
  #count = 0;
  #bytes = 0;

  constructor(
    public cacheSize: number,
    public cacheBytes: number,
  ) {}

  /** The live object for `oid`, if any. */
  get(oid: Oid): Persistent | undefined {
    const strong = this.#strong.get(oid);
    if (strong !== undefined) return strong;
    const ref = this.#weak.get(oid);
    if (ref === undefined) return undefined;
    const obj = ref.deref();
    if (obj === undefined) this.#weak.delete(oid);
    return obj;
  }

  add(oid: Oid, obj: Persistent): void {
    this.#weak.delete(oid);
    this.#strong.set(oid, obj);
    if (this.#strong.size > this.#count + 2 * this.cacheSize + 1024) this.#demoteGhosts();
  }

  remove(oid: Oid): void {
    this.#strong.delete(oid);
    this.#weak.delete(oid);
  }

  /** `obj` became a ghost: hold it weakly from now on. */
  demote(oid: Oid, obj: Persistent): void {
    if (this.#strong.get(oid) !== obj) return;
    this.#strong.delete(oid);
    this.#weak.set(oid, new WeakRef(obj));
    if (this.#weak.size >= this.#sweepAt) this.#sweep();
  }

  /** Move every ghost of the nursery to the weak map. */
  #demoteGhosts(): void {
    for (const [oid, obj] of this.#strong) if (metaOf(obj).lruObj === null) this.demote(oid, obj);
  }

  /** Drop weak entries of collected objects; amortised by doubling the threshold. */
  #sweep(): void {
    for (const [oid, ref] of this.#weak) if (ref.deref() === undefined) this.#weak.delete(oid);
    this.#sweepAt = Math.max(1024, this.#weak.size * 2);
  }

  /** Record that `obj` holds its state in memory and was just used. */
  touch(obj: Persistent, meta: Meta): void {
    if (meta.lruObj !== null) {
      if (this.#tail === meta) return;
      this.#unlink(meta);
    } else {
      meta.lruObj = obj;
      this.#count++;
      this.#bytes += meta.size;
    }
    meta.lruPrev = this.#tail;
    meta.lruNext = null;
    if (this.#tail !== null) this.#tail.lruNext = meta;
    else this.#head = meta;
    this.#tail = meta;
  }

  /** The record size of `meta`'s object changed (a commit wrote a new revision). */
  resize(meta: Meta, size: number): void {
    if (meta.lruObj !== null) this.#bytes += size - meta.size;
    meta.size = size;
  }

  /** Forget `obj` as loaded (it became a ghost or was dropped). */
  unload(_obj: Persistent, meta: Meta): void {
    if (meta.lruObj === null) return;
    this.#unlink(meta);
    meta.lruObj = null;
    this.#count--;
    this.#bytes -= meta.size;
  }

  #unlink(meta: Meta): void {
    const { lruPrev: prev, lruNext: next } = meta;
    if (prev !== null) prev.lruNext = next;
    else this.#head = next;
    if (next !== null) next.lruPrev = prev;
    else this.#tail = prev;
    meta.lruPrev = null;
    meta.lruNext = null;
  }

  /** Loaded objects, least recently used first (a snapshot: safe to change the cache meanwhile). */
  loadedObjects(): Array<[Persistent, Meta]> {
    const out: Array<[Persistent, Meta]> = [];
    for (let m = this.#head; m !== null; m = m.lruNext) out.push([m.lruObj!, m]);
    return out;
  }

  /** Loaded objects, least recently used first (also a snapshot). */
  loadedEntries(): Array<[Persistent, Meta]> {
    return this.loadedObjects();
  }

  get loadedCount(): number {
    return this.#count;
  }

  get loadedBytes(): number {
    return this.#bytes;
  }

  get knownCount(): number {
    return this.#strong.size + this.#weak.size;
  }

  overBudget(): boolean {
    return this.#count > this.cacheSize || this.#bytes > this.cacheBytes;
  }

  /**
   * Evict least-recently-used objects until within budget. `evict(obj, meta)` turns an
   * unchanged object into a ghost and returns true, or returns false for a changed one
   * (which is then kept and counted as used). `keep` is never evicted (the object being
   * loaded right now).
   */
  shrink(evict: (obj: Persistent, meta: Meta) => boolean, keep?: Persistent, maxScan = Infinity): void {
    // Look at a bounded number of entries: when most loaded objects cannot be evicted
    // (changed, or holding containers in the middle of a transaction), scanning them all
    // on every load would be quadratic. The cache then stays over budget for a while.
    const excess = Math.max(this.#count - this.cacheSize, 1);
    let budget = Math.min(this.#count, 2 * excess + 32, maxScan);
    while (this.overBudget() && budget-- > 0) {
      const meta = this.#head;
      if (meta === null) return;
      const obj = meta.lruObj!;
      if (obj === keep || !evict(obj, meta)) this.touch(obj, meta);
      else this.unload(obj, meta);
    }
  }

  /** Forget everything (the connection closed for good). */
  clear(): void {
    this.#strong.clear();
    this.#weak.clear();
    for (let m = this.#head; m !== null; ) {
      const next = m.lruNext;
      m.lruPrev = m.lruNext = null;
      m.lruObj = null;
      m = next;
    }
    this.#head = this.#tail = null;
    this.#count = 0;
    this.#bytes = 0;
  }
}
