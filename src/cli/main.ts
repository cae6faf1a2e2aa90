/**
 * The `amber` command line. One small file per command; each has --help and exits non-zero
 * with a one-line error on failure.
 */
import { Command, CommanderError } from "commander";
import { AmberError } from "../index.ts";
import { infoCommand } from "./info.ts";
import { serveCommand } from "./serve.ts";

const program = new Command();
program
  .name("amber")
  .description("amberdb: a transactional object database for TypeScript")
  .showHelpAfterError("(run with --help for usage)")
  .exitOverride();
program.addCommand(infoCommand());
program.addCommand(serveCommand());

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  const message = err instanceof AmberError || err instanceof TypeError ? err.message : String((err as Error)?.message ?? err);
  process.stderr.write(`amber: ${message.split("\n")[0]}\n`);
  process.exit(1);
}
