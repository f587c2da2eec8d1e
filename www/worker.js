// A kernel thread of a threaded page runtime (started by main.js): instantiates the module on
// the page's shared memory, registers with the pool (its index), says so, and runs the pool's
// loop forever (a worker past the host's thread limit for this tab sits jobs out).
// `dir`: the build main.js loaded (the plain or the relaxed-SIMD threaded build).
self.onmessage = async ({ data }) => {
  let index, pool_worker;
  try {
    const m = await import(`${data.dir}/page_runtime.js`);
    await m.default({ module_or_path: data.module, memory: data.memory });
    index = m.pool_register();
    pool_worker = m.pool_worker;
    self.postMessage("ready");
  } catch (e) {
    self.postMessage(`worker failed: ${e}`);
    return;
  }
  pool_worker(index);
};
