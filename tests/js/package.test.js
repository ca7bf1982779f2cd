// The npm package (package.json at the repository root): what it exports and what it ships.
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8"));

it("resolves @herald/client through its exports to the file Flask serves", async () => {
  const viaPackage = await import("@herald/client");
  const direct = await import(path.join(ROOT, "service/static/herald.js"));
  assert.equal(viaPackage.Herald, direct.Herald);
  assert.equal(viaPackage.default, direct.Herald);
  assert.equal(pkg.exports["."].types, pkg.types);
  for (const f of [pkg.exports["."].default, pkg.types]) assert.ok(existsSync(path.join(ROOT, f)), f);
});

it("packs herald.js, herald.d.ts, README and package.json only", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"],
                           { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const files = JSON.parse(out)[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "package.json", "service/static/herald.d.ts",
                           "service/static/herald.js"]);
});

it("installs nothing into a folder Flask serves", () => {
  assert.equal(Object.keys(pkg.dependencies || {}).length, 0, "the client has no dependencies");
  assert.ok(!existsSync(path.join(ROOT, "service/static/node_modules")));
  assert.ok(!existsSync(path.join(ROOT, "service/static/package.json")));
});
