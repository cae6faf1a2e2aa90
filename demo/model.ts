import { Persistent, PersistentList, persistent, serializable } from "../src/index.ts";

@serializable("demo.Isbn")
export class Isbn {
  constructor(public code = "") {}
  toString(): string {
    return `ISBN ${this.code}`;
  }
}

@persistent("demo.Author")
export class Author extends Persistent {
  name = "";
  books = new PersistentList<Book>();
}

@persistent("demo.Book")
export class Book extends Persistent {
  title = "";
  isbn = new Isbn();
  author: Author | null = null;
  copies = 0;
  tags: string[] = [];
}
