/**
 * The msgpackr extensions amberdb registers. They are process-global (msgpackr keeps one
 * table): another library registering the same type numbers in this process would clash.
 * The numbers are part of the record format.
 *
 *   type  payload                     meaning
 *   1     index into the refs table   a reference to a persistent object (the envelope's
 *                                     header holds its oid, class and property path)
 *   2     [className, fields]         an instance of a registered value class
 *   3     nil                         negative zero (MessagePack integers cannot hold it)
 *   5     [k1, v1, k2, v2, ...]       a Map (in plain mode, see state.ts)
 *   6     binary                      a Node Buffer (a Uint8Array comes back as one)
 *
 * Types 3, 5 and 6 are registered here; 1 and 2 need the record being encoded or decoded
 * (its refs table, its shared value arrays) and are registered by state.ts.
 */
import { addExtension } from "msgpackr";

/** A value of a class that is not registered in this process, kept as it was stored. */
export class BrokenValue {
  constructor(
    /** The stored class name. */
    readonly className: string,
    /** The stored fields, readable. */
    readonly fields: Record<string, unknown>,
  ) {}
}

class NegativeZero {}
/** Stands for -0 while a state is packed (type 3). */
export const NEG_ZERO = new NegativeZero();

/** A Buffer, so it comes back as a Buffer (MessagePack binary comes back as Uint8Array). */
export class BufferBox {
  constructor(readonly bytes: Uint8Array) {}
}

/** A Map on its way into plain mode (extension 5). */
export class MapBox {
  constructor(readonly map: Map<unknown, unknown>) {}
}

addExtension({
  Class: NegativeZero,
  type: 3,
  write: () => null,
  read: () => -0,
});

addExtension({
  Class: MapBox,
  type: 5,
  write(box: MapBox) {
    const flat: unknown[] = [];
    for (const [k, v] of box.map) flat.push(k, v);
    return flat;
  },
  read(flat: unknown[]) {
    const map = new Map<unknown, unknown>();
    for (let i = 0; i < flat.length; i += 2) map.set(flat[i], flat[i + 1]);
    return map;
  },
});

addExtension({
  Class: BufferBox,
  type: 6,
  write: (box: BufferBox) => box.bytes,
  read: (bytes: Uint8Array) => Buffer.from(bytes),
});
