pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add needs equal lengths");
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
