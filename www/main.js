// Loads the page runtime (built by scripts/build-page.sh into ./pkg) and runs it. The runtime
// reads ?ws=, &token= and &tab= from this page's URL.
import init, { run } from "./pkg/page_runtime.js";

try {
  await init();
  await run();
} catch (e) {
  document.title = `tabpool: error: ${e}`;
  console.error(e);
}
