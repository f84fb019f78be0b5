#!/usr/bin/env node
"use strict";
// Serves route.ts (the Next.js route handler of docs/HANDLERS.md) on plain Node, for trying
// HTTP handlers without the web app and for muzo-ops's tests:
//   NODE_PATH=tests/node/node_modules node examples/muzo-jobs/http-server.js 8787
//   muzo-ops worker --handler MOCKUP=http://127.0.0.1:8787/api/jobs/mockup
// route.ts is compiled at start-up with TypeScript's own compiler (the typescript package).
// Prints "listening <port>" once it accepts calls; SIGTERM stops it.

const fs = require("node:fs");
const http = require("node:http");
const path = require("node:path");
const Module = require("node:module");
const ts = require("typescript");

function loadRoute(file) {
  const source = fs.readFileSync(file, "utf8");
  const { outputText } = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, strict: true },
    fileName: file,
  });
  const compiled = new Module(file, module);
  compiled.filename = file;
  compiled.paths = Module._nodeModulePaths(path.dirname(file));
  compiled._compile(outputText, file);
  return compiled.exports;
}

const route = loadRoute(path.join(__dirname, "route.ts"));

const server = http.createServer(async (req, res) => {
  try {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const request = new Request(`http://${req.headers.host}${req.url}`, {
      method: req.method,
      headers: req.headers,
      body: req.method === "GET" || req.method === "HEAD" ? undefined : Buffer.concat(chunks),
    });
    const response = req.method === "POST" ? await route.POST(request) : new Response("POST only", { status: 405 });
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  } catch (error) {
    process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
    res.writeHead(500, { "content-type": "text/plain" });
    res.end("internal error");
  }
});

server.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
