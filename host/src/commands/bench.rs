//! `tabpool bench proto|matmul`: measured in a real tab, printed as tables with ratios from the
//! same run.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use page_runtime::executors::cpu;
use serde_json::json;
use shared_proto::{DType, Kernel, MatMulVariant, Reply, Request, Tensor};

use super::{KERNEL_TIMEOUT, adapter_line, random_values};
use crate::stats::{median, quantile};
use crate::{Host, Tab};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Host↔tab no-op round trips, then host→tab tensor throughput.
pub async fn proto(host: &mut Host, pings: usize, json_out: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    let tab = host.launch_tab().await?;
    let tab_start_ms = t.elapsed().as_secs_f64() * 1e3;
    for _ in 0..50 {
        tab.ping(CALL_TIMEOUT).await?;
    }
    let mut rtt_ms = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        tab.ping(CALL_TIMEOUT).await?;
        rtt_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut rows = Vec::new();
    for size in [64usize << 10, 1 << 20, 16 << 20] {
        rows.push((size, sink_throughput(&tab, size, 256 << 20).await?));
    }
    let (p50, p99) = (quantile(&rtt_ms, 0.5), quantile(&rtt_ms, 0.99));
    if json_out {
        let tp: Vec<_> = rows.iter().map(|(s, mbs)| json!({ "bytes": s, "mb_per_s": mbs })).collect();
        println!(
            "{}",
            json!({ "tab_start_ms": tab_start_ms, "pings": pings, "rtt_p50_ms": p50, "rtt_p99_ms": p99, "throughput": tp })
        );
        return Ok(());
    }
    println!("bench proto — tab {} ({})", tab.id(), tab.caps().user_agent);
    println!("tab start (launch → authenticated Hello): {tab_start_ms:.0} ms");
    println!("no-op round trip over {pings} pings: p50 {:.3} ms, p99 {:.3} ms", p50, p99);
    println!("{:>14} | {:>10}", "tensor bytes", "MB/s");
    for (size, mbs) in rows {
        println!("{:>14} | {:>10.1}", size, mbs);
    }
    Ok(())
}

/// Send `total` bytes in tensors of `size` bytes, 4 in flight; MB/s (10^6) acknowledged by the tab.
async fn sink_throughput(tab: &Tab, size: usize, total: usize) -> anyhow::Result<f64> {
    let tensor = Tensor { dtype: DType::U8, shape: vec![size as u32], data: vec![0xA5u8; size].into() };
    let count = total.div_ceil(size);
    let t = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0u64;
    for i in 0..count {
        in_flight.push(tab.call(Request::Sink, vec![tensor.clone()], CALL_TIMEOUT));
        if in_flight.len() >= 4 || i + 1 == count {
            while in_flight.len() > if i + 1 == count { 0 } else { 3 } {
                match in_flight.next().await.expect("non-empty")? {
                    (Reply::Sunk { bytes }, _) => acked += bytes,
                    (other, _) => anyhow::bail!("unexpected reply to Sink: {other:?}"),
                }
            }
        }
    }
    anyhow::ensure!(acked == (count * size) as u64, "tab acknowledged {acked} of {} bytes", count * size);
    Ok(acked as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// GFLOP/s of the tiled and naive kernels on the tab's adapter, beside the host CPU executor.
pub async fn matmul(host: &mut Host, sizes: &[u32], json_out: bool) -> anyhow::Result<()> {
    let tab = host.launch_tab().await?;
    let mut rows = Vec::new();
    for &s in sizes {
        let n = s as usize;
        let a = Tensor::from_f32(vec![s, s], &random_values(n * n, 1));
        let b = Tensor::from_f32(vec![s, s], &random_values(n * n, 2));
        let flop = 2.0 * (n * n * n) as f64;
        // Enough repeats per submission that dispatch, not readback, dominates small sizes.
        let repeats = (2e7 / flop).clamp(1.0, 50.0) as u32;
        let gflops = |ms: f64| flop / (ms * 1e6);
        let tiled = median_device_ms(&tab, MatMulVariant::Tiled, repeats, &a, &b).await?;
        let naive = median_device_ms(&tab, MatMulVariant::Naive, repeats, &a, &b).await?;
        let (av, bv) = (a.to_f32().expect("f32"), b.to_f32().expect("f32"));
        let t = Instant::now();
        std::hint::black_box(cpu::matmul(&av, &bv, n, n, n));
        let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push((s, gflops(tiled), gflops(naive), gflops(cpu_ms)));
    }
    let adapter = adapter_line(tab.caps());
    if json_out {
        let r: Vec<_> = rows
            .iter()
            .map(|(s, t, n, c)| json!({ "size": s, "tiled_gflops": t, "naive_gflops": n, "cpu_gflops": c, "tiled_over_naive": t / n }))
            .collect();
        println!("{}", json!({ "adapter": adapter, "rows": r }));
        return Ok(());
    }
    println!("bench matmul — tab {} on {adapter}", tab.id());
    println!(
        "{:>6} | {:>13} | {:>13} | {:>12} | {:>15}",
        "n", "tiled GFLOP/s", "naive GFLOP/s", "tiled/naive", "host CPU GFLOP/s"
    );
    for (s, t, n, c) in rows {
        println!("{s:>6} | {t:>13.3} | {n:>13.3} | {:>11.2}x | {c:>15.3}", t / n);
    }
    Ok(())
}

async fn median_device_ms(
    tab: &Tab,
    variant: MatMulVariant,
    repeats: u32,
    a: &Tensor,
    b: &Tensor,
) -> anyhow::Result<f64> {
    let kernel = Kernel::MatMul { variant, repeats };
    tab.kernel(kernel.clone(), vec![a.clone(), b.clone()], KERNEL_TIMEOUT).await?; // compile + warm
    let mut ms = Vec::new();
    for _ in 0..3 {
        ms.push(tab.kernel(kernel.clone(), vec![a.clone(), b.clone()], KERNEL_TIMEOUT).await?.1);
    }
    Ok(median(&ms))
}
