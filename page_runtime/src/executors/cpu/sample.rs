//! Token choice from logits: argmax and top-k / top-p sampling with a caller-drawn `u`.

use std::cmp::Ordering;

/// Per row of `v` logits: the index of the largest, the first among equals.
pub fn argmax(logits: &[f32], v: usize) -> Vec<i32> {
    logits.chunks_exact(v).map(argmax_row).collect()
}

fn argmax_row(row: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as i32
}

/// Per row of `v` logits and its `(temperature, top_k, top_p, u)`: see `Op::Sample`. Top-p
/// counts mass within the top-k candidates (renormalised over them, as llama.cpp's chain does);
/// candidates are ordered by probability, then by index, so ties are deterministic.
pub fn sample(logits: &[f32], params: &[f32], v: usize) -> Vec<i32> {
    logits.chunks_exact(v).zip(params.chunks_exact(4)).map(|(row, p)| sample_row(row, p[0], p[1], p[2], p[3])).collect()
}

fn sample_row(row: &[f32], temperature: f32, top_k: f32, top_p: f32, u: f32) -> i32 {
    // NaN too.
    if temperature.is_nan() || temperature <= 0.0 {
        return argmax_row(row);
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let t = temperature as f64;
    // Unnormalised probabilities: every later step only compares and sums them relatively.
    let mut cand: Vec<(usize, f64)> = row.iter().enumerate().map(|(i, &x)| (i, ((x - max) as f64 / t).exp())).collect();
    let order =
        |a: &(usize, f64), b: &(usize, f64)| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0));
    let k = if top_k >= 1.0 { (top_k as usize).min(cand.len()) } else { cand.len() };
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, order);
        cand.truncate(k);
    }
    cand.sort_unstable_by(order);
    if top_p < 1.0 {
        let goal = top_p as f64 * cand.iter().map(|c| c.1).sum::<f64>();
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (n, c) in cand.iter().enumerate() {
            cum += c.1;
            if cum >= goal {
                keep = n + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }
    let mass: f64 = cand.iter().map(|c| c.1).sum();
    let target = u.clamp(0.0, 1.0) as f64 * mass;
    let mut cum = 0.0;
    for c in &cand {
        cum += c.1;
        if cum > target {
            return c.0 as i32;
        }
    }
    cand.last().expect("at least one candidate").0 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 2.0, 1.2, -3.0, 0.0, 1.9]
    }

    /// softmax(logits / t) in f64.
    fn probs(l: &[f32], t: f64) -> Vec<f64> {
        let e: Vec<f64> = l.iter().map(|&x| (x as f64 / t).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    /// Token counts over a grid of `n` evenly spaced u in [0, 1).
    fn counts(l: &[f32], t: f32, k: f32, p: f32, n: usize) -> Vec<usize> {
        let mut c = vec![0; l.len()];
        for i in 0..n {
            let u = (i as f32 + 0.5) / n as f32;
            c[sample(l, &[t, k, p, u], l.len())[0] as usize] += 1;
        }
        c
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&logits(), 8), vec![1]);
        assert_eq!(argmax(&[1.0, 0.0, 0.0, 3.0], 2), vec![0, 1]);
        assert_eq!(sample(&logits(), &[0.0, 0.0, 1.0, 0.7], 8), vec![1], "temperature 0 is argmax");
        assert_eq!(sample(&logits(), &[-1.0, 5.0, 0.5, 0.7], 8), vec![1], "negative temperature too");
    }

    #[test]
    fn top_k_1_is_argmax_for_every_u() {
        assert!(counts(&logits(), 0.8, 1.0, 1.0, 1000)[1] == 1000);
        // A tie at the top: the lower index.
        assert!(counts(&[3.0, 1.0, 3.0], 2.0, 1.0, 1.0, 100)[0] == 100);
    }

    #[test]
    fn frequencies_match_the_renormalised_distribution() {
        let l = logits();
        let n = 100_000;
        for (t, k, p) in [(1.0f32, 0.0f32, 1.0f32), (0.7, 3.0, 1.0), (1.3, 0.0, 0.8), (1.0, 5.0, 0.6)] {
            let pr = probs(&l, t as f64);
            let mut idx: Vec<usize> = (0..l.len()).collect();
            idx.sort_by(|&a, &b| pr[b].partial_cmp(&pr[a]).unwrap().then(a.cmp(&b)));
            if k > 0.0 {
                idx.truncate(k as usize);
            }
            let in_k: f64 = idx.iter().map(|&i| pr[i]).sum();
            let mut kept = vec![];
            let mut cum = 0.0;
            for &i in &idx {
                kept.push(i);
                cum += pr[i] / in_k;
                if cum >= p as f64 {
                    break;
                }
            }
            let mass: f64 = kept.iter().map(|&i| pr[i]).sum();
            let c = counts(&l, t, k, p, n);
            for (i, &ci) in c.iter().enumerate() {
                let want = if kept.contains(&i) { pr[i] / mass } else { 0.0 };
                let got = ci as f64 / n as f64;
                // A grid of n u's quantises each token's share to 1/n.
                assert!((got - want).abs() <= 2.0 / n as f64, "t {t} k {k} p {p} token {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn the_top_p_tail_is_never_picked() {
        // Probabilities ~ 0.64, 0.24, 0.09, ...: top_p 0.85 keeps the first two.
        let l = [3.0f32, 2.0, 1.0, 0.0, -1.0];
        let c = counts(&l, 1.0, 0.0, 0.85, 20_000);
        assert!(c[0] > 0 && c[1] > 0, "{c:?}");
        assert_eq!(c[2..].iter().sum::<usize>(), 0, "{c:?}");
        // u at the very top of [0, 1) still lands inside the kept set.
        assert!(sample(&l, &[1.0, 0.0, 0.85, 0.999_999_9], 5)[0] < 2);
    }
}
