/** The Item of workload a (shootout), shared by the benchmark scripts. */
import { Persistent, persistent } from "../src/index.ts";

@persistent("bench.Item")
export class Item extends Persistent {
  i = 0;
  s = "";
  f = 0;
  l: number[] = [];
  ref: Item | null = null;
}

/** Fill an Item (or a plain object of the same shape) as BENCH.md describes. */
export function fillItem<T extends { i: number; s: string; f: number; l: number[] }>(o: T, i: number): T {
  o.i = i;
  o.s = `item-${String(i).padStart(15, "0")}`;
  o.f = i * 1.5;
  o.l = [i, i + 1, i + 2];
  return o;
}
