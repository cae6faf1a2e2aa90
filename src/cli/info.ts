/** `amber info <storage>`: what a database holds, without changing it. */
import { Command } from "commander";
import { DB } from "../index.ts";

export function infoCommand(): Command {
  return new Command("info")
    .description("show a database's storage, last transaction and root contents")
    .argument("<storage>", "a directory path, file: URL, memory: or amber://host:port")
    .option("--json", "print JSON")
    .action(async (url: string, opts: { json?: boolean }) => {
      const db = await DB.open(url, { create: false });
      try {
        const tid = await db.lastTid();
        const transactions = await db.storage.transactions(0, 1_000_000);
        const root = db.open().root();
        const info = {
          storage: db.storage.url,
          lastTid: tid,
          lastCommit: tid > 0 ? new Date(Math.floor(tid / 1000)).toISOString() : null,
          transactions: transactions.length,
          history: db.storage.capabilities.history,
          rootKeys: [...root.keys()],
        };
        if (opts.json) process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
        else {
          process.stdout.write(
            [
              `storage       ${info.storage}`,
              `last tid      ${info.lastTid}${info.lastCommit ? ` (${info.lastCommit})` : ""}`,
              `transactions  ${info.transactions}`,
              `history kept  ${info.history ? "yes" : "no"}`,
              `root keys     ${info.rootKeys.length ? info.rootKeys.join(", ") : "(none)"}`,
            ].join("\n") + "\n",
          );
        }
      } finally {
        await db.close();
      }
    });
}
