"use strict";
// muzo's three job types as a job runner sees them, with the providers simulated: no call leaves
// the machine. The real code (apps/worker/src/jobs/{generation,mockup,fulfillment}.ts) calls
// RunPod, OpenAI and Cloudprinter where these functions compute a stand-in answer; the shape of
// the job it receives and of the errors it throws is the same.
//
// A job: {id, type, payload, attempt, maxAttempts, projectId} (docs/HANDLERS.md).
// Throw RetryLater(message, seconds) when the provider asks to come back later, JobRefused(message)
// when retrying cannot help; anything else thrown is a failure the worker retries by its policy.
//
// payload.simulate (demos and tests only) plays the provider's side:
//   {"busyAttempts": N, "retryAfterSeconds": S}  the provider is busy on attempts 1..N: retry after S
//   {"refuse": "reason"}                         the provider refuses the job for good

const crypto = require("node:crypto");

class RetryLater extends Error {
  constructor(message, seconds) {
    super(message);
    this.name = "RetryLater";
    this.seconds = seconds;
  }
}

class JobRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "JobRefused";
  }
}

const STYLES = new Set(["watercolor", "oil", "line-art", "pop-art", "photo"]);

function simulateProvider(job, provider) {
  const simulate = job.payload.simulate || {};
  if (simulate.refuse) throw new JobRefused(`${provider} refused the job: ${simulate.refuse}`);
  if (job.attempt <= (simulate.busyAttempts || 0)) {
    throw new RetryLater(`${provider} is busy (attempt ${job.attempt})`, simulate.retryAfterSeconds ?? 1);
  }
}

// A stable stand-in for what a provider would return: the same job gives the same answer.
function digest(...parts) {
  return crypto.createHash("sha256").update(parts.join("\u0000")).digest("hex");
}

async function generation(job) {
  const { prompt, style, parameters = {} } = job.payload;
  if (!STYLES.has(style.id)) throw new JobRefused(`unknown style ${JSON.stringify(style.id)}`);
  simulateProvider(job, "RunPod");
  const count = parameters.n || 1;
  const format = parameters.outputFormat || "png";
  const seed = parseInt(digest(job.id, prompt).slice(0, 8), 16);
  return {
    provider: "simulated-runpod",
    images: Array.from({ length: count }, (_, i) => ({
      url: `s3://muzo-assets/generations/${job.id}/${i}.${format}`,
      seed: seed + i,
    })),
    stage: parameters.stage || "preview",
    attempt: job.attempt,
  };
}

async function mockup(job) {
  const { orderId, outputAssetId, productVariantId, template = "default" } = job.payload;
  simulateProvider(job, "mockup renderer");
  return {
    orderId,
    mockupUrl: `s3://muzo-assets/mockups/${orderId}/${productVariantId}-${template}.jpg`,
    sourceAssetId: outputAssetId,
    attempt: job.attempt,
  };
}

async function fulfillment(job) {
  const { provider, order } = job.payload;
  simulateProvider(job, provider);
  // The job id is the provider's idempotency key: a job delivered twice makes one order.
  return {
    provider,
    orderId: order.orderId,
    providerOrderId: `sim-${provider}-${digest(job.id).slice(0, 12)}`,
    idempotencyKey: job.id,
    items: order.items.reduce((sum, item) => sum + item.quantity, 0),
    attempt: job.attempt,
  };
}

const RUNNERS = { GENERATION: generation, MOCKUP: mockup, FULFILLMENT: fulfillment };

async function runJob(job) {
  const run = RUNNERS[job.type];
  if (!run) throw new JobRefused(`no runner for job type ${JSON.stringify(job.type)}`);
  return run(job);
}

module.exports = { runJob, RetryLater, JobRefused };
