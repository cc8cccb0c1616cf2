#!/usr/bin/env node
// Compiles contracts/src with solcjs into contracts/out/Xray.json.
// `node contracts/build.js --check` compiles and fails if the committed artifact differs.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = path.resolve(__dirname, "..");
const SRC = path.join(__dirname, "src");
const OUT = path.join(__dirname, "out", "Xray.json");
const NODE_MODULES = path.join(ROOT, "node_modules");
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  viaIR: true,
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] } },
};

function sha256(text) {
  return crypto.createHash("sha256").update(text).digest("hex");
}

function findImport(importPath) {
  const file = path.join(NODE_MODULES, importPath);
  if (!file.startsWith(NODE_MODULES + path.sep) || !fs.existsSync(file)) {
    return { error: `import not found: ${importPath}` };
  }
  return { contents: fs.readFileSync(file, "utf8") };
}

function compile() {
  const sources = {};
  for (const name of fs.readdirSync(SRC).filter((n) => n.endsWith(".sol")).sort()) {
    sources[name] = { content: fs.readFileSync(path.join(SRC, name), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(1);

  // Every file the compiler read, ours and OpenZeppelin's, goes into the source hash.
  const used = Object.keys(JSON.parse(output.contracts["Xray.sol"].Xray.metadata).sources).sort();
  const fileHashes = {};
  for (const name of used) {
    const text = sources[name] ? sources[name].content : findImport(name).contents;
    fileHashes[name] = sha256(text);
  }
  const combined = sha256(used.map((n) => `${n}:${fileHashes[n]}`).join("\n"));
  const contract = output.contracts["Xray.sol"].Xray;
  return {
    contractName: "Xray",
    compiler: { name: "solcjs", version: solc.version() },
    settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion, viaIR: SETTINGS.viaIR },
    sourcesHash: combined,
    sources: fileHashes,
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  };
}

const artifact = JSON.stringify(compile(), null, 2) + "\n";
if (process.argv.includes("--check")) {
  const committed = fs.existsSync(OUT) ? fs.readFileSync(OUT, "utf8") : "";
  if (committed !== artifact) {
    process.stderr.write("contracts/out/Xray.json is stale: run `make contracts` and commit it\n");
    process.exit(1);
  }
  process.stdout.write("contracts/out/Xray.json is up to date\n");
} else {
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, artifact);
  process.stdout.write(`wrote ${path.relative(ROOT, OUT)} (solc ${solc.version()})\n`);
}
