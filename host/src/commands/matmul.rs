//! `tabpool matmul`: one real matmul in a real tab, checked against the CPU executor.

use std::time::Instant;

use anyhow::bail;
use page_runtime::executors::{cpu, tolerance};
use serde_json::json;
use shared_proto::{Kernel, MatMulVariant, Tensor};

use super::{KERNEL_TIMEOUT, adapter_line, random_values};
use crate::Host;

pub struct Args {
    pub m: u32,
    pub k: u32,
    pub n: u32,
    pub variant: MatMulVariant,
    pub seed: u64,
    pub json: bool,
}

pub async fn run(host: &mut Host, args: Args) -> anyhow::Result<()> {
    let (m, k, n) = (args.m as usize, args.k as usize, args.n as usize);
    if m == 0 || k == 0 || n == 0 {
        bail!("--m, --k and --n must be at least 1");
    }
    let t = Instant::now();
    let tab = host.launch_tab().await?;
    let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
    let a = random_values(m * k, args.seed);
    let b = random_values(k * n, args.seed.wrapping_add(1));
    let inputs = vec![Tensor::from_f32(vec![args.m, args.k], &a), Tensor::from_f32(vec![args.k, args.n], &b)];
    let t = Instant::now();
    let (outputs, device_ms) =
        tab.kernel(Kernel::MatMul { variant: args.variant, repeats: 1 }, inputs, KERNEL_TIMEOUT).await?;
    let round_trip_ms = t.elapsed().as_secs_f64() * 1e3;
    let got = outputs.first().and_then(Tensor::to_f32).unwrap_or_default();
    let t = Instant::now();
    let want = cpu::matmul(&a, &b, m, k, n);
    let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
    if got.len() != want.len() {
        bail!("tab returned {} values, expected {}", got.len(), want.len());
    }
    let c = tolerance::compare(&got, &want, &tolerance::matmul_bound(&a, &b, m, k, n));
    let gflops = 2.0 * (m * k * n) as f64 / (device_ms * 1e6);
    if args.json {
        let v = json!({
            "m": m, "k": k, "n": n, "variant": format!("{:?}", args.variant).to_lowercase(),
            "adapter": tab.caps().webgpu.adapter, "tab_start_ms": tab_start_ms,
            "device_ms": device_ms, "round_trip_ms": round_trip_ms, "cpu_ms": cpu_ms, "gflops": gflops,
            "max_abs_err": c.max_abs, "max_rel_err": c.max_rel, "outside_bound": c.violations, "ok": c.violations == 0,
        });
        println!("{v}");
    } else {
        println!("matmul {m}x{k}x{n} ({:?}) on tab {} — {}", args.variant, tab.id(), adapter_line(tab.caps()));
        println!(
            "  tab start {tab_start_ms:.0} ms; device {device_ms:.2} ms ({gflops:.3} GFLOP/s), round trip {round_trip_ms:.2} ms; host CPU {cpu_ms:.2} ms"
        );
        println!(
            "  vs CPU executor: max abs err {:.3e}, max rel err {:.3e}, {} of {} outside the f32 error bound -> {}",
            c.max_abs,
            c.max_rel,
            c.violations,
            got.len(),
            if c.violations == 0 { "OK" } else { "MISMATCH" }
        );
    }
    if c.violations > 0 {
        bail!("{} elements differ from the CPU result beyond the f32 error bound", c.violations);
    }
    Ok(())
}
