// Loads the page runtime (built by scripts/build-page.sh) and runs it. The runtime reads ?ws=,
// &token= and &tab= from this page's URL. With &threads=N (N > 1) in a cross-origin isolated
// page (the host serves COOP/COEP), the threaded build in ./pkg-threads runs its kernels on
// this thread and N − 1 workers sharing its memory (worker.js); otherwise, or when that build is
// missing, the single-thread build in ./pkg.
const want = Math.max(1, parseInt(new URLSearchParams(location.search).get("threads") || "1", 10) || 1);

async function load() {
  if (want > 1 && self.crossOriginIsolated === true) {
    try {
      const m = await import("./pkg-threads/page_runtime.js");
      await m.default();
      const [module, memory] = m.pool_handles();
      // Each worker answers once its instance is up and counted by the pool.
      await Promise.all(
        Array.from({ length: want - 1 }, () => {
          const w = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
          return new Promise((resolve, reject) => {
            w.onmessage = (e) => (e.data === "ready" ? resolve() : reject(new Error(String(e.data))));
            w.onerror = (e) => reject(new Error(e.message || "worker failed to start"));
            w.postMessage({ module, memory });
          });
        }),
      );
      return m;
    } catch (e) {
      // Only a missing threaded build falls back; a broken one must be seen.
      if (!String(e).includes("pkg-threads")) throw e;
      console.warn(`tabpool: no threaded build (${e}): one thread`);
    }
  }
  const m = await import("./pkg/page_runtime.js");
  await m.default();
  return m;
}

try {
  const m = await load();
  await m.run();
} catch (e) {
  document.title = `tabpool: error: ${e}`;
  console.error(e);
}
