// app/api/jobs/[type]/route.ts: the web app's end of a muzo-ops HTTP handler
// (muzo-ops worker --handler GENERATION=https://web.internal/api/jobs/generation).
import { createHmac, timingSafeEqual } from "node:crypto";
import { JobRefused, RetryLater, runJob } from "./jobs";

export const runtime = "nodejs"; // node:crypto, and the raw body bytes
const TOLERANCE_SECONDS = 300; // refuse a signature older (or newer) than this: a replayed call

// Muzo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">, keyed with
// MUZO_HANDLER_SIGNING_SECRET; during a rotation's grace the previous key is accepted too.
export function verifyMuzoSignature(
  body: Buffer,
  header: string | null,
  secrets: Array<string | undefined>,
  nowSeconds: number = Math.floor(Date.now() / 1000),
): boolean {
  if (!header) return false;
  const stamps: string[] = [];
  const signatures: Buffer[] = [];
  for (const part of header.split(",")) {
    const at = part.indexOf("=");
    const key = part.slice(0, at).trim();
    const value = part.slice(at + 1).trim();
    if (key === "t") stamps.push(value);
    if (key === "v1" && /^[0-9a-f]{64}$/.test(value)) signatures.push(Buffer.from(value, "hex"));
  }
  if (stamps.length !== 1 || !/^[0-9]{1,12}$/.test(stamps[0])) return false;
  const t = Number(stamps[0]);
  if (Math.abs(nowSeconds - t) > TOLERANCE_SECONDS) return false;
  for (const secret of secrets) {
    if (!secret) continue;
    const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest();
    if (signatures.some((given) => timingSafeEqual(expected, given))) return true;
  }
  return false;
}

export async function POST(request: Request): Promise<Response> {
  const body = Buffer.from(await request.arrayBuffer()); // the bytes as signed, before any parsing
  const secrets = [process.env.MUZO_HANDLER_SIGNING_SECRET, process.env.MUZO_HANDLER_SIGNING_SECRET_PREVIOUS];
  if (!verifyMuzoSignature(body, request.headers.get("muzo-signature"), secrets)) {
    return new Response("invalid Muzo-Signature", { status: 401 }); // 4xx: the worker fails the job
  }
  const job = JSON.parse(body.toString("utf8"));
  try {
    // Idempotency-Key (the job id) is job.id: delivery is at least once.
    return Response.json(await runJob(job)); // 2xx: done, this JSON is the job's result
  } catch (error) {
    if (error instanceof RetryLater) {
      return new Response(error.message, { status: 503, headers: { "Retry-After": String(error.seconds) } });
    }
    if (error instanceof JobRefused) return new Response(error.message, { status: 422 }); // fatal
    throw error; // Next.js answers 500: the worker retries by the type's policy
  }
}
