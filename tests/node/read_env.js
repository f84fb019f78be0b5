// Prints, as JSON, the variables whose names start with argv[3] after
// Next.js's own loader (@next/env) has read the .env in folder argv[2].
const { loadEnvConfig } = require("@next/env");
const quiet = { info() {}, warn() {}, error(...a) { console.error(...a); } };
const { combinedEnv } = loadEnvConfig(process.argv[2], true, quiet, true);
const out = {};
for (const key of Object.keys(combinedEnv)) {
  if (key.startsWith(process.argv[3])) out[key] = combinedEnv[key];
}
process.stdout.write(JSON.stringify(out));
