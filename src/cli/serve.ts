/**
 * `amber serve <storage>`: serve a storage to many clients (`amber://host:port`).
 * Prints one line when listening (`listening on amber://127.0.0.1:7700 ...`); SIGINT and
 * SIGTERM shut down cleanly (requests in progress finish, voted transactions are aborted).
 */
import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError } from "commander";
import { StorageServer } from "../storage/server/storage-server.ts";

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError("a port is an integer from 0 to 65535");
  return n;
}

function bytes(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1024) throw new InvalidArgumentError("an integer of at least 1024");
  return n;
}

export function serveCommand(): Command {
  return new Command("serve")
    .description("serve a storage to clients over the network (amber://host:port)")
    .argument("<storage>", "a directory path, file: URL or memory:; with {name} in it, one storage per database name")
    .option("--host <host>", "interface to listen on (beyond loopback a token is required)", "127.0.0.1")
    .option("--port <port>", "TCP port (0: any free port)", port, 7700)
    .option("--token <token>", "clients must present this token (default: $AMBER_TOKEN)")
    .option("--tls-cert <file>", "serve TLS with this PEM certificate")
    .option("--tls-key <file>", "the PEM private key of --tls-cert")
    .option("--durability <mode>", "durable (default) or relaxed commits for the served storage", "durable")
    .option("--max-frame <bytes>", "largest request accepted from a client", bytes)
    .action(
      async (
        url: string,
        opts: { host: string; port: number; token?: string; tlsCert?: string; tlsKey?: string; durability: string; maxFrame?: number },
      ) => {
        if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined)) throw new TypeError("--tls-cert and --tls-key go together");
        if (opts.durability !== "durable" && opts.durability !== "relaxed") throw new TypeError(`--durability must be durable or relaxed, got ${opts.durability}`);
        const token = opts.token ?? process.env.AMBER_TOKEN;
        const server = await StorageServer.start({
          storage: url,
          host: opts.host,
          port: opts.port,
          ...(token === undefined ? {} : { token }),
          ...(opts.tlsCert === undefined ? {} : { tls: { cert: readFileSync(opts.tlsCert), key: readFileSync(opts.tlsKey!) } }),
          ...(opts.maxFrame === undefined ? {} : { maxFrame: opts.maxFrame }),
          storageOptions: { durability: opts.durability },
        });
        process.stdout.write(`listening on ${server.url} serving ${url}${opts.tlsCert ? " (TLS)" : ""}${token ? " (token required)" : ""}\n`);
        await new Promise<void>((resolve) => {
          const stop = (signal: string) => {
            process.stderr.write(`${new Date().toISOString()} ${signal}: shutting down\n`);
            server.close().then(resolve, (err: unknown) => {
              process.stderr.write(`shutdown failed: ${(err as Error).message}\n`);
              process.exit(1);
            });
          };
          process.once("SIGINT", () => stop("SIGINT"));
          process.once("SIGTERM", () => stop("SIGTERM"));
        });
        process.stdout.write("stopped\n");
      },
    );
}
