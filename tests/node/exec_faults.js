"use strict";
// An exec handler that misbehaves on purpose (payload.fault), for muzo-ops's exec handler tests.
//   throw     an uncaught error: exit 1, the stack on stderr
//   abort     killed by a signal (SIGABRT)
//   hang      start a grandchild, write both pids to payload.pidFile, ignore SIGTERM, never end
//   leak      print the OPENAI_API_KEY it was given to stderr, then exit 1
//   notjson   exit 0 with text that is not JSON on stdout
//   env       exit 0 with what it sees: its arguments, working directory, which variables it has
const fs = require("node:fs");
const { spawn } = require("node:child_process");

const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const fault = job.payload.fault;
  if (fault === "throw") throw new Error(`job ${job.id} broke on attempt ${job.attempt}`);
  if (fault === "abort") process.abort();
  if (fault === "hang") {
    process.on("SIGTERM", () => process.stderr.write("SIGTERM ignored\n"));
    const grandchild = spawn(process.execPath, ["-e", "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)"],
      { stdio: "ignore" });
    fs.writeFileSync(job.payload.pidFile, `${process.pid} ${grandchild.pid}\n`);
    setInterval(() => {}, 1000);
    return;
  }
  if (fault === "leak") {
    process.stderr.write(`calling the provider with key ${process.env.OPENAI_API_KEY} failed\n`);
    process.exit(1);
  }
  if (fault === "notjson") {
    process.stdout.write("all done!\n");
    return;
  }
  if (fault === "env") {
    process.stdout.write(JSON.stringify({
      argv: process.argv.slice(2),
      cwd: process.cwd(),
      hasDatabaseUrl: Boolean(process.env.DATABASE_URL),
      hasOpenAiKey: Boolean(process.env.OPENAI_API_KEY),
      fromProcess: process.env.MUZO_TEST_FROM_PROCESS || null,
      job,
    }));
    return;
  }
  process.stderr.write(`unknown fault ${fault}\n`);
  process.exit(2);
});
