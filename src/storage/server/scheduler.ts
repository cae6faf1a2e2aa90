/**
 * Serves the clients of a storage server fairly: the requests a client has sent wait in
 * its own queue, and the scheduler runs them round-robin, at most `budget` requests of one
 * client per turn, yielding to the event loop after every round (so sockets are read and
 * storage calls complete between rounds). A client that pipelines thousands of requests
 * therefore delays another client's request by at most one turn of each client, not by
 * its whole backlog.
 *
 * When nothing else is waiting, a client's requests run at once, in the call that woke it
 * (no extra event-loop turn on an idle server).
 */

/** A client as the scheduler sees it. */
export interface Turns {
  /** Run up to `budget` of the requests waiting; true if more are ready to run now. */
  runTurn(budget: number): boolean;
}

/** Requests of one client run per turn. */
export const TURN_BUDGET = 16;

export class FairScheduler {
  /** Clients with requests ready, in turn order; `#queued` says who is in it. */
  #ring: Turns[] = [];
  readonly #queued = new Set<Turns>();
  #scheduled = false;
  #running = false;

  /** `client` has requests ready to run. */
  wake(client: Turns): void {
    if (this.#queued.has(client)) return;
    if (!this.#running && !this.#scheduled && this.#ring.length === 0) {
      // Nobody is waiting: serve it now.
      this.#turn(client);
      return;
    }
    this.#queued.add(client);
    this.#ring.push(client);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => this.#round());
  }

  /** One turn for each client that was ready when the round began. */
  #round(): void {
    this.#scheduled = false;
    const ready = this.#ring;
    this.#ring = [];
    for (const client of ready) {
      this.#queued.delete(client);
      this.#turn(client);
    }
  }

  #turn(client: Turns): void {
    this.#running = true;
    let more: boolean;
    try {
      more = client.runTurn(TURN_BUDGET);
    } finally {
      this.#running = false;
    }
    if (more && !this.#queued.has(client)) {
      this.#queued.add(client);
      this.#ring.push(client);
      this.#schedule();
    }
  }
}
