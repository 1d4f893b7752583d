// The local SQS (fauxqs, pinned in package.json) on 127.0.0.1 only: `node devtools/local_sqs.mjs --port 9324`.
// fauxqs's own command binds every interface; its buildApp() lets us choose the address.
// Prints one line, "local SQS fauxqs <version> listening on http://127.0.0.1:<port>", once it answers,
// and stops on SIGINT or SIGTERM (exit 0). Port 0 picks a free port, printed in that line.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { buildApp } from "fauxqs";

const HOST = "127.0.0.1";

/** Return fauxqs's installed version, for the start-up line. */
function fauxqsVersion() {
  // The package exports only its entry, dist/app.js; its package.json is one folder up.
  const manifest = new URL("../package.json", import.meta.resolve("fauxqs"));
  return JSON.parse(readFileSync(manifest, "utf8")).version;
}

/** Parse --port, failing with one clear line on a bad value. */
function parsePort() {
  const { values } = parseArgs({ options: { port: { type: "string", default: "9324" } } });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`error: --port must be a port number (0-65535), not ${JSON.stringify(values.port)}`);
    process.exit(2);
  }
  return port;
}

/** Start the server, print where it listens, and close it on a stop signal. */
async function main() {
  const port = parsePort();
  // No request log: every SQS call would print a line and drown the other processes' output.
  const app = buildApp({ logger: false, defaultRegion: "us-east-1" });
  let address;
  try {
    address = await app.listen({ port, host: HOST });
  } catch (error) {
    console.error(`error: cannot listen on ${HOST}:${port}: ${error.code ?? error.message}`);
    process.exit(1);
  }
  console.log(`local SQS fauxqs ${fauxqsVersion()} listening on ${address}`);
  let stopping = false;
  const stop = async () => {
    if (stopping) process.exit(1);
    stopping = true;
    await app.close();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main();
