// Copies the built files of the page's npm packages (pinned in package-lock.json) to where
// they are used, with their licences:
//   chart.js  -> static/vendor/            (served by the api with the page)
//   axe-core  -> ../../../tests/browser/vendor/  (the accessibility check of the browser tests)
// Run `npm ci && npm run vendor` after changing package-lock.json; the copies are committed so
// that serving and testing the page need no Node toolchain.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";

const here = (p) => new URL(p, import.meta.url);
const version = (pkg) => JSON.parse(readFileSync(here(`./node_modules/${pkg}/package.json`))).version;

function vendor(pkg, files, outDir) {
  const out = here(outDir);
  mkdirSync(out, { recursive: true });
  for (const [from, to] of files) copyFileSync(here(`./node_modules/${pkg}/${from}`), new URL(to, out));
  console.log(`vendored ${pkg} ${version(pkg)} into ${outDir}`);
}

vendor("chart.js", [["dist/chart.umd.min.js", "chart.umd.min.js"], ["LICENSE.md", "chart.js-LICENSE.md"]], "./static/vendor/");
vendor("axe-core", [["axe.min.js", "axe.min.js"], ["LICENSE", "axe-core-LICENSE"]], "../../../tests/browser/vendor/");
