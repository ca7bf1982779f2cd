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

it("packs herald.js, its two modules, herald.d.ts and package.json only (not the demo)", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"],
                           { cwd: PKG, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const files = JSON.parse(out)[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["herald-presence.js", "herald-sse.js", "herald.d.ts", "herald.js",
                          "package.json"]);
});

it("installs nothing into a folder Flask serves", () => {
  assert.equal(Object.keys(pkg.dependencies || {}).length, 0, "the client has no dependencies");
  assert.ok(!existsSync(path.join(PKG, "node_modules")));
  assert.ok(!existsSync(path.join(ROOT, "package.json")), "the top level is fixed");
});
