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
    let k = if top_k >= 1.0 { (top_k as usize).min(cand.len()) } else { cand.len() };
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, order);
        cand.truncate(k);
        cand.sort_unstable_by_key(|c| c.0);
    }
    // Masses summed in a defined order (index order for the top-k set, probability order for a
    // top-p prefix) so the cut and the draw do not depend on how the candidates were shuffled.
    let mut mass: f64 = cand.iter().map(|c| c.1).sum();
    if top_p < 1.0 {
        let goal = top_p as f64 * mass;
        if let Some((keep, cum)) = sorted_prefix(&mut cand, |cum| cum >= goal) {
            cand.truncate(keep);
            mass = cum;
        }
    }
    let target = u.clamp(0.0, 1.0) as f64 * mass;
    match sorted_prefix(&mut cand, |cum| cum > target) {
        Some((n, _)) => cand[n - 1].0 as i32,
        // Rounding left the target at the very top: the least likely kept token.
        None => cand.iter().copied().max_by(order).expect("a candidate").0 as i32,
    }
}

/// Most likely first, then the lower index: a total order, so every executor walks the
/// candidates alike.
fn order(a: &(usize, f64), b: &(usize, f64)) -> Ordering {
    b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0))
}

/// The shortest prefix of `cand` in [`order`] whose cumulative mass satisfies `done`: its length
/// and mass, with that prefix sorted in place (`None`: not even all of them). Sorts only as much
/// of the head as it needs, growing it 4× at a time: a top-p cut or a draw over a 49152-token
/// vocabulary usually ends within the first few dozen, where a full sort costs milliseconds.
/// The sums are those of a full sort (same order, same additions).
fn sorted_prefix(cand: &mut [(usize, f64)], done: impl Fn(f64) -> bool) -> Option<(usize, f64)> {
    let mut head = cand.len().min(64);
    let mut cum = 0.0;
    let mut at = 0;
    loop {
        if head < cand.len() {
            cand[at..].select_nth_unstable_by(head - at - 1, order);
        }
        cand[at..head].sort_unstable_by(order);
        for (n, c) in cand[at..head].iter().enumerate() {
            cum += c.1;
            if done(cum) {
                return Some((at + n + 1, cum));
            }
        }
        if head == cand.len() {
            return None;
        }
        at = head;
        head = (head * 4).min(cand.len());
    }
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

    /// The spec read literally: sort everything, cut, walk (masses summed as documented).
    fn naive(l: &[f32], t: f32, k: f32, p: f32, u: f32) -> i32 {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let all: Vec<(usize, f64)> =
            l.iter().enumerate().map(|(i, &x)| (i, ((x - max) as f64 / t as f64).exp())).collect();
        let mut c = all.clone();
        c.sort_by(order);
        if k >= 1.0 {
            c.truncate(k as usize);
        }
        let mut kept = vec![false; l.len()];
        c.iter().for_each(|x| kept[x.0] = true);
        let mut mass: f64 = all.iter().filter(|a| kept[a.0]).map(|a| a.1).sum();
        if p < 1.0 {
            let goal = p as f64 * mass;
            let mut cum = 0.0;
            if let Some(n) = c.iter().position(|x| {
                cum += x.1;
                cum >= goal
            }) {
                c.truncate(n + 1);
                mass = cum;
            }
        }
        let target = u as f64 * mass;
        let mut cum = 0.0;
        c.iter()
            .find(|x| {
                cum += x.1;
                cum > target
            })
            .unwrap_or(c.last().unwrap())
            .0 as i32
    }

    #[test]
    fn partial_sorting_picks_what_a_full_sort_picks() {
        let v = 3000;
        // Rounded logits so ties occur, over a wide range so the head is sometimes long.
        let l: Vec<f32> = (0..v).map(|i| ((i * 7919 % 997) as f32 / 50.0).round() / 4.0).collect();
        for (t, k, p) in [(1.0, 0.0, 1.0), (0.5, 0.0, 0.9), (3.0, 0.0, 0.99), (1.0, 200.0, 0.5), (10.0, 0.0, 1.0)] {
            for i in 0..200 {
                let u = (i as f32 + 0.25) / 200.0;
                assert_eq!(sample(&l, &[t, k, p, u], v)[0], naive(&l, t, k, p, u), "t {t} k {k} p {p} u {u}");
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
