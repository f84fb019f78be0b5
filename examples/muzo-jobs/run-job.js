#!/usr/bin/env node
"use strict";
// An exec handler for muzo-ops's worker:
//   muzo-ops worker --handler 'GENERATION=exec:node examples/muzo-jobs/run-job.js generation'
// Reads the job (one JSON object) on stdin and answers by its exit status:
//   0   done: stdout holds the result as JSON
//   75  retry: stdout may hold {"retryAfterSeconds": S}
//   65  fatal: the job fails at once, no retry
//   1   any other failure (the worker retries it by the type's policy)
// Diagnostics go to stderr (the worker keeps its tail in lastError, secrets masked).
// SIGTERM (the type's timeout, the worker's shutdown) leaves the job to the next attempt.

const { runJob, RetryLater, JobRefused } = require("./jobs");

const EX_DATAERR = 65;
const EX_TEMPFAIL = 75;

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (chunk) => chunks.push(chunk));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

async function main() {
  const expected = process.argv[2] ? process.argv[2].toUpperCase() : null;
  let job;
  try {
    job = JSON.parse(await readStdin());
  } catch (error) {
    process.stderr.write(`run-job: stdin is not a job: ${error.message}\n`);
    return EX_DATAERR;
  }
  if (expected && job.type !== expected) {
    process.stderr.write(`run-job: this runner takes ${expected} jobs, not ${job.type}\n`);
    return EX_DATAERR;
  }
  try {
    const result = await runJob(job);
    process.stdout.write(JSON.stringify(result === undefined ? null : result));
    return 0;
  } catch (error) {
    if (error instanceof RetryLater) {
      process.stderr.write(`${error.message}\n`);
      process.stdout.write(JSON.stringify({ retryAfterSeconds: error.seconds }));
      return EX_TEMPFAIL;
    }
    if (error instanceof JobRefused) {
      process.stderr.write(`${error.message}\n`);
      return EX_DATAERR;
    }
    process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
    return 1;
  }
}

process.on("SIGTERM", () => {
  process.stderr.write("run-job: stopped by SIGTERM; the job will run again\n");
  process.exit(EX_TEMPFAIL);
});

main().then((code) => {
  process.exitCode = code;
});
