// Loads the page runtime (built by scripts/build-page.sh) and runs it. The runtime reads ?ws=,
// &token= and &tab= from this page's URL. With &threads=N (N > 1) in a cross-origin isolated
// page (the host serves COOP/COEP), a threaded build runs its kernels on this thread and N − 1
// workers sharing its memory (worker.js): ./pkg-threads-relaxed where this browser validates
// relaxed SIMD (a probe module holding one f32x4.relaxed_madd), else ./pkg-threads; otherwise,
// or when those builds are missing, the single-thread build in ./pkg.
const want = Math.max(1, parseInt(new URLSearchParams(location.search).get("threads") || "1", 10) || 1);

// (module (func (result v128) v128.const 0 v128.const 0 v128.const 0 f32x4.relaxed_madd))
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
  0x03, 0x02, 0x01, 0x00, // functions: one of type 0
  0x0a, 0x3d, 0x01, 0x3b, 0x00, // code: one body of 59 bytes, no locals
  ...[0, 1, 2].flatMap(() => [0xfd, 0x0c, ...new Array(16).fill(0)]), // three v128.const 0
  0xfd, 0x85, 0x02, // f32x4.relaxed_madd (0xfd 261)
  0x0b, // end
]);
const relaxed = (() => {
  try {
    return WebAssembly.validate(RELAXED_PROBE);
  } catch {
    return false;
  }
})();

// A threaded build from `dir`, its workers up; throws what failed.
async function threaded(dir) {
  const m = await import(`${dir}/page_runtime.js`);
  await m.default();
  const [module, memory] = m.pool_handles();
  // Each worker answers once its instance is up and counted by the pool.
  await Promise.all(
    Array.from({ length: want - 1 }, () => {
      const w = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
      return new Promise((resolve, reject) => {
        w.onmessage = (e) => (e.data === "ready" ? resolve() : reject(new Error(String(e.data))));
        w.onerror = (e) => reject(new Error(e.message || "worker failed to start"));
        w.postMessage({ dir: new URL(dir, import.meta.url).href, module, memory });
      });
    }),
  );
  return m;
}

async function load() {
  if (want > 1 && self.crossOriginIsolated === true) {
    for (const dir of relaxed ? ["./pkg-threads-relaxed", "./pkg-threads"] : ["./pkg-threads"]) {
      try {
        return await threaded(dir);
      } catch (e) {
        // Only a missing build falls back; a broken one must be seen.
        if (!String(e).includes(dir.slice(2))) throw e;
        console.warn(`tabpool: no build in ${dir} (${e})`);
      }
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
