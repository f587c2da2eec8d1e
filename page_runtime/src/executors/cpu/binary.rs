//! Binary element-wise family; `b` broadcasts over `a`'s leading dims.

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    broadcast(a, b, |x, y| x + y)
}

pub fn mul(a: &[f32], b: &[f32]) -> Vec<f32> {
    broadcast(a, b, |x, y| x * y)
}

fn broadcast(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    assert!(!b.is_empty() && a.len().is_multiple_of(b.len()), "b must tile a");
    a.chunks_exact(b.len()).flat_map(|row| row.iter().zip(b).map(|(&x, &y)| f(x, y))).collect()
}
