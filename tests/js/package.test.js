// The npm package (service/static/package.json, beside the files it ships: the top level of
// the repository is fixed): what it exports and what it ships.
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const PKG = path.join(ROOT, "service/static");
const pkg = JSON.parse(readFileSync(path.join(PKG, "package.json"), "utf8"));

it("resolves @herald/client through its exports to the file Flask serves", async () => {
  const viaPackage = await import("@herald/client");
  const direct = await import(path.join(ROOT, "service/static/herald.js"));
  assert.equal(viaPackage.Herald, direct.Herald);
  assert.equal(viaPackage.default, direct.Herald);
  assert.equal(pkg.exports["."].types, pkg.types);
  for (const f of [pkg.exports["."].default, pkg.types]) assert.ok(existsSync(path.join(PKG, f)), f);
});

/** herald.js and the modules it is split into (each imported by herald.js or another). */
const MODULES = ["herald.js", "herald-fallback.js", "herald-monitor.js", "herald-presence.js",
                 "herald-receive.js", "herald-reconnect.js", "herald-socket.js", "herald-sse.js",
                 "herald-task.js", "herald-token.js", "herald-util.js"];
const RELATIVE_IMPORT = /^(?:import|export) [^;\n]* from "\.\/([^"]+)";$/gm;

it("packs herald.js, its modules, herald.d.ts and package.json only (not the demo)", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"],
                           { cwd: PKG, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const files = JSON.parse(out)[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, [...MODULES, "herald.d.ts", "package.json"].sort());
  // what a shipped module imports is shipped too: a new module needs its "files" entry
  const imported = new Set();
  for (const f of files.filter((name) => name.endsWith(".js"))) {
    for (const [, dep] of readFileSync(path.join(PKG, f), "utf8").matchAll(RELATIVE_IMPORT)) {
      assert.ok(files.includes(dep), `${f} imports ${dep}, which the package does not ship`);
      imported.add(dep);
    }
  }
  assert.deepEqual([...imported].sort(), MODULES.filter((m) => m !== "herald.js").sort());
});

it("installs nothing into a folder Flask serves", () => {
  assert.equal(Object.keys(pkg.dependencies || {}).length, 0, "the client has no dependencies");
  assert.ok(!existsSync(path.join(PKG, "node_modules")));
  assert.ok(!existsSync(path.join(ROOT, "package.json")), "the top level is fixed");
});
