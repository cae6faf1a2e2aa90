/**
 * The phase of a connection's transaction: one value at a time (the table is at the top of
 * commit.ts, where the phases change).
 */
/** The transaction's phase (see commit.ts). */
export const Phase = {
  ACTIVE: 0,
  COMMITTING: 1,
  REPLAYING: 2,
  DOOMED: 3,
  CLOSED: 4,
} as const;
