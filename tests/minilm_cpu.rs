//! MiniLM on the CPU executor against the independent float64 reference
//! (`tests/data/minilm_embeddings.json`): tokenizer ids, then vectors.

use crate::support;

use page_runtime::executors::cpu::CpuModel;
use tabpool::models::minilm::{MiniLm, inputs_from_ids};

fn model() -> (MiniLm, CpuModel) {
    let m = MiniLm::load(None).unwrap_or_else(|e| panic!("{e:#}"));
    let cpu = CpuModel::new(m.graph.clone(), m.weights.clone()).unwrap();
    (m, cpu)
}

#[test]
fn tokenizer_and_cpu_vectors_match_the_reference() {
    let (m, cpu) = model();
    let refs = support::minilm_reference();
    assert!(refs.len() >= 6, "reference has its sentences");
    for r in &refs {
        let (ids, truncated) = m.tokenize(&[r.text.as_str()]).unwrap();
        assert_eq!(ids[0], r.input_ids, "token ids of {:?}", r.text);
        assert!(!truncated[0]);
        let out = cpu.run(&inputs_from_ids(&ids)).unwrap();
        assert_eq!(out[0].shape, vec![1, 384]);
        let v = out[0].to_f32().unwrap();
        let (cos, diff) = (support::cosine(&v, &r.embedding), support::max_abs_diff(&v, &r.embedding));
        eprintln!("cpu {:?}: cosine {cos:.7}, max abs {diff:.2e}", r.text);
        assert!(cos >= support::MIN_COSINE && diff <= support::MAX_ABS, "{:?}: cosine {cos}, max abs {diff}", r.text);
    }
}

#[test]
fn a_mixed_length_batch_equals_one_at_a_time() {
    let (m, cpu) = model();
    let refs = support::minilm_reference();
    let ids: Vec<Vec<u32>> = refs.iter().map(|r| r.input_ids.clone()).collect();
    let batch = cpu.run(&inputs_from_ids(&ids)).unwrap()[0].to_f32().unwrap();
    for (i, r) in ids.iter().enumerate() {
        let single = cpu.run(&inputs_from_ids(std::slice::from_ref(r))).unwrap()[0].to_f32().unwrap();
        let diff = support::max_abs_diff(&batch[i * 384..(i + 1) * 384], &single);
        // Padding is masked out exactly; only summation order may differ.
        assert!(diff <= 1e-5, "text {i}: batch vs single max abs {diff}");
    }
    let _ = m;
}

#[test]
fn long_text_is_truncated_at_256_tokens_and_said_so() {
    let (m, _) = model();
    let long = "tabpool ".repeat(400);
    let (ids, truncated) = m.tokenize(&[long.as_str()]).unwrap();
    assert_eq!(ids[0].len(), 256);
    assert!(truncated[0]);
    assert!(m.tokenize(&["   "]).unwrap_err().to_string().contains("empty"));
}

#[test]
fn tables_too_short_for_the_tokenizer_or_truncation_are_refused_at_load() {
    use tabpool::models::generated::{Shape, write_bert};
    let dir = tempfile::tempdir().unwrap();
    let real = tabpool::models::minilm::default_dir();
    let short_positions = Shape { positions: 128, ..Shape::TINY };
    let p = write_bert(&dir.path().join("short-pos"), short_positions, 1, &real).unwrap();
    let e = format!("{:#}", MiniLm::load(Some(&p)).err().expect("a 128-row position table is refused"));
    assert!(e.contains("position_embeddings has 128 rows") && e.contains("256"), "{e}");
    let small_vocab = Shape { vocab: 1000, ..Shape::TINY };
    let p = write_bert(&dir.path().join("small-vocab"), small_vocab, 1, &real).unwrap();
    let e = format!("{:#}", MiniLm::load(Some(&p)).err().expect("a 1000-row word table is refused"));
    assert!(e.contains("word_embeddings has 1000 rows") && e.contains("30522"), "{e}");
    // The generator's defaults load.
    let p = write_bert(&dir.path().join("ok"), Shape::TINY, 1, &real).unwrap();
    MiniLm::load(Some(&p)).unwrap();
}

#[test]
fn out_of_range_token_ids_are_refused_by_the_cpu_executor() {
    let (_, cpu) = model();
    for bad in [30522u32, u32::MAX] {
        let e = cpu.run(&inputs_from_ids(&[vec![101, bad, 102]])).expect_err("refused");
        assert_eq!(e.kind, shared_proto::ErrorKind::BadInput, "{e:?}");
        assert!(e.message.contains("outside 0..30522"), "{}", e.message);
    }
}
