// Copies the chart library's self-contained build (and its licence) from node_modules into
// static/vendor/, where the api serves it. Run after `npm ci` when package-lock.json changes;
// the copied files are committed so that serving the page needs no Node toolchain.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";

const out = new URL("./static/vendor/", import.meta.url);
mkdirSync(out, { recursive: true });
const pkg = JSON.parse(readFileSync(new URL("./node_modules/chart.js/package.json", import.meta.url)));
copyFileSync(new URL("./node_modules/chart.js/dist/chart.umd.min.js", import.meta.url), new URL("chart.umd.min.js", out));
copyFileSync(new URL("./node_modules/chart.js/LICENSE.md", import.meta.url), new URL("chart.js-LICENSE.md", out));
console.log(`vendored chart.js ${pkg.version} into static/vendor/`);
