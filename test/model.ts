import { Persistent, PersistentList, PersistentMap, persistent, serializable } from "../src/index.ts";

@serializable("test.Address")
export class Address {
  constructor(
    public street = "",
    public city = "",
  ) {}
  label(): string {
    return `${this.street}, ${this.city}`;
  }
}

@persistent("test.Customer")
export class Customer extends Persistent {
  name = "";
  status = "active";
  tags: string[] = [];
  address: Address | null = null;
  orders = new PersistentList<Order>();
  friend: Customer | null = null;
  prefs = new Map<string, unknown>();
  greet(): string {
    return `hello ${this.name}`;
  }
}

@persistent("test.Order")
export class Order extends Persistent {
  constructor(
    public total = 0,
    public customer: Customer | null = null,
  ) {
    super();
  }
}

@persistent("test.Tally")
export class Tally extends Persistent {
  n = 0;
}

/** Assigns its fields in the constructor body rather than with class fields. */
@persistent("test.Assigned")
export class Assigned extends Persistent {
  declare a: number;
  declare b: string;
  constructor(a = 1, b = "b") {
    super();
    this.a = a;
    this.b = b;
  }
}

export function customers(root: PersistentMap<string, any>): PersistentMap<string, Customer> {
  let m = root.get("customers") as PersistentMap<string, Customer> | undefined;
  if (m === undefined) {
    m = new PersistentMap<string, Customer>();
    root.set("customers", m);
  }
  return m;
}
