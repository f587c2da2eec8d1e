// A kernel thread of the threaded page runtime (started by main.js): instantiates the module on
// the page's shared memory, registers with the pool (its index), says so, and runs the pool's
// loop forever (a worker past the host's thread limit for this tab sits jobs out).
import init, { pool_register, pool_worker } from "./pkg-threads/page_runtime.js";

self.onmessage = async ({ data }) => {
  let index;
  try {
    await init({ module_or_path: data.module, memory: data.memory });
    index = pool_register();
    self.postMessage("ready");
  } catch (e) {
    self.postMessage(`worker failed: ${e}`);
    return;
  }
  pool_worker(index);
};
