//! The SmolLM2 step graph (`model_graphs::smollm2::graph`) run by the CPU executor: shapes,
//! stages and a stage pipeline equal to the whole model.

#[cfg(test)]
mod tests {
    use shared_proto::quant::{quantize_row_q4_1, quantize_row_q8_0};
    use shared_proto::{Node, ValueRef};

    use std::collections::HashMap;

    use model_graphs::Part;
    use model_graphs::smollm2::graph::*;
    use shared_proto::{DType, Graph, KvDecl, Op, STEP_INPUTS, Tensor};

    const TINY: Config =
        Config { layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 96, vocab: 50, rms_eps: 1e-5, rope_base: 1e4 };

    fn tiny_weights(cfg: &Config) -> HashMap<String, Tensor> {
        let q = |dtype: DType, shape: Vec<u32>| {
            let n = shape.iter().product::<u32>() as usize;
            let vals: Vec<f32> = (0..n).map(|i| ((i * 7919 % 101) as f32 - 50.0) / 500.0).collect();
            let data = match dtype {
                DType::Q4_1 => quantize_row_q4_1(&vals),
                DType::Q8_0 => quantize_row_q8_0(&vals),
                _ => return Tensor::from_f32(shape, &vals),
            };
            Tensor { dtype, shape, data: data.into() }
        };
        let (h, kvw) = (cfg.hidden, cfg.kv_heads * cfg.head_dim());
        let mut m = HashMap::new();
        m.insert("token_embd.weight".into(), q(DType::Q8_0, vec![cfg.vocab, h]));
        m.insert("output_norm.weight".into(), q(DType::F32, vec![h]));
        for l in 0..cfg.layers {
            for (name, dtype, shape) in [
                ("attn_norm", DType::F32, vec![h]),
                ("ffn_norm", DType::F32, vec![h]),
                ("attn_q", DType::Q4_1, vec![h, h]),
                ("attn_k", DType::Q4_1, vec![kvw, h]),
                ("attn_v", DType::Q4_1, vec![kvw, h]),
                ("attn_output", DType::Q4_1, vec![h, h]),
                ("ffn_gate", DType::Q4_1, vec![cfg.ffn, h]),
                ("ffn_up", DType::Q4_1, vec![cfg.ffn, h]),
                ("ffn_down", DType::Q4_1, vec![h, cfg.ffn]),
            ] {
                m.insert(format!("blk.{l}.{name}.weight"), q(dtype, shape));
            }
        }
        m
    }

    const LIMITS: KvLimits = KvLimits { max_tokens: 256, max_sessions: 4 };

    fn op_of(g: &Graph, value: u32) -> &Op {
        match g.value(value) {
            ValueRef::Node(n) => &g.nodes[n].op,
            other => panic!("value {value} is {other:?}, not a node"),
        }
    }

    fn weight_name(g: &Graph, value: u32) -> &str {
        match g.value(value) {
            ValueRef::Weight(w) => &g.weights[w].name,
            other => panic!("value {value} is {other:?}, not a weight"),
        }
    }

    #[test]
    fn step_graph_has_the_llama_structure_and_validates() {
        let weights = tiny_weights(&TINY);
        let (g, tensors) = build(&TINY, &weights, LIMITS, Outputs::default()).unwrap();
        g.validate().unwrap();
        let names: Vec<(&str, DType)> = g.inputs.iter().map(|d| (d.name.as_str(), d.dtype)).collect();
        assert_eq!(names, STEP_INPUTS);
        assert_eq!(g.kv, Some(KvDecl { layers: 2, kv_heads: 2, head_dim: 16, max_tokens: 256, max_sessions: 4 }));
        // Every GGUF tensor once, token_embd shared by the gather and the LM head.
        assert_eq!(g.weights.len(), weights.len());
        assert_eq!(tensors.len(), g.weights.len());
        for (d, t) in g.weights.iter().zip(&tensors) {
            assert_eq!((d.dtype, &d.shape), (t.dtype, &t.shape), "{}", d.name);
            assert_eq!(d.hash, shared_proto::content_hash(&weights[&d.name].data), "{}", d.name);
        }
        // 15 nodes per layer plus embedding gather, final norm, row gather, LM head, sample.
        assert_eq!(g.nodes.len(), 15 * 2 + 5);
        let count = |f: &dyn Fn(&Op) -> bool| g.nodes.iter().filter(|n| f(&n.op)).count();
        assert_eq!(count(&|o| matches!(o, Op::Linear { bias: false })), 7 * 2 + 1);
        assert_eq!(count(&|o| matches!(o, Op::RmsNorm { eps } if *eps == 1e-5)), 2 * 2 + 1);
        assert_eq!(count(&|o| matches!(o, Op::Rope { heads: 4, base } if *base == 1e4)), 2);
        assert_eq!(count(&|o| matches!(o, Op::Rope { heads: 2, .. })), 2);
        assert_eq!(count(&|o| matches!(o, Op::SiluMul)), 2);
        for l in 0..2 {
            let n = count(&|o| *o == Op::CachedAttention { layer: l, heads: 4, kv_heads: 2 });
            assert_eq!(n, 1, "layer {l}");
        }

        // The tail: sample(linear(gather(rmsnorm(x), rows), token_embd), sampling).
        assert_eq!(g.outputs.len(), 1);
        let sample = &g.nodes[g.nodes.len() - 1];
        assert_eq!(sample.op, Op::Sample);
        assert_eq!(sample.args[1], 4, "sampling input");
        let Node { op, args } = &g.nodes[g.nodes.len() - 2];
        assert_eq!(*op, Op::Linear { bias: false });
        assert_eq!(weight_name(&g, args[1]), "token_embd.weight");
        assert_eq!(*op_of(&g, args[0]), Op::Gather);
        let gather = &g.nodes[g.nodes.len() - 3];
        assert_eq!(gather.args[1], 3, "rows input");
        assert!(matches!(op_of(&g, gather.args[0]), Op::RmsNorm { .. }));
        // The first node gathers ids from token_embd (the tab finds the vocabulary this way).
        assert_eq!(g.nodes[0].op, Op::Gather);
        assert_eq!(g.nodes[0].args[1], 0);
        assert_eq!(page_runtime::sessions::vocab(&g), TINY.vocab);
        // Cached attention reads q, k, v, pos, kv_start with q and k rotated.
        let att = g.nodes.iter().find(|n| matches!(n.op, Op::CachedAttention { .. })).unwrap();
        assert!(matches!(op_of(&g, att.args[0]), Op::Rope { heads: 4, .. }));
        assert!(matches!(op_of(&g, att.args[1]), Op::Rope { heads: 2, .. }));
        assert_eq!(*op_of(&g, att.args[2]), Op::Linear { bias: false });
        assert_eq!(&att.args[3..], [1, 2]);
    }

    #[test]
    fn logits_flag_adds_output_one() {
        let (g, _) = build(&TINY, &tiny_weights(&TINY), LIMITS, Outputs { logits: true }).unwrap();
        assert_eq!(g.outputs.len(), 2);
        assert_eq!(*op_of(&g, g.outputs[0]), Op::Sample);
        assert_eq!(*op_of(&g, g.outputs[1]), Op::Linear { bias: false });
    }

    #[test]
    fn wrong_shapes_and_dtypes_are_refused_naming_the_weight() {
        let mut w = tiny_weights(&TINY);
        w.get_mut("blk.1.attn_k.weight").unwrap().shape = vec![64, 64];
        let e = build(&TINY, &w, LIMITS, Outputs::default()).unwrap_err().to_string();
        assert!(e.contains("blk.1.attn_k.weight"), "{e}");
        let mut w = tiny_weights(&TINY);
        w.insert("output_norm.weight".into(), Tensor { dtype: DType::I32, shape: vec![64], data: vec![0; 256].into() });
        let e = build(&TINY, &w, LIMITS, Outputs::default()).unwrap_err().to_string();
        assert!(e.contains("output_norm.weight"), "{e}");
        let mut w = tiny_weights(&TINY);
        w.remove("blk.0.ffn_down.weight");
        let e = build(&TINY, &w, LIMITS, Outputs::default()).unwrap_err().to_string();
        assert!(e.contains("blk.0.ffn_down.weight missing"), "{e}");
        let e = build(&TINY, &tiny_weights(&TINY), KvLimits { max_tokens: 0, max_sessions: 1 }, Outputs::default());
        assert!(e.is_err(), "an empty KV cache is refused by validate()");
    }

    /// Runs a step graph (or a chain of stage graphs) for one session's tokens on the CPU
    /// executor: the sampled id and the logits.
    fn forward(stages: &[(Graph, Vec<Tensor>)], tokens: &[u32]) -> (u32, Vec<f32>) {
        use page_runtime::executors::cpu::CpuModel;
        use page_runtime::sessions::Sessions;
        use shared_proto::StepRow;
        let rows = [StepRow { session: 1, tokens: tokens.to_vec(), sampling: shared_proto::Sampling::Greedy }];
        let mut hidden = vec![];
        for (i, (g, w)) in stages.iter().enumerate() {
            let mut sessions = Sessions::new(g.kv.unwrap());
            sessions.open(1, 64).unwrap();
            let plan = sessions.plan_stage(g, &rows, page_runtime::sessions::vocab(g), hidden).unwrap();
            let out = CpuModel::new(g.clone(), w.clone()).unwrap().run(&plan.inputs).unwrap();
            if i + 1 == stages.len() {
                let id = i32::from_le_bytes(out[0].data[..4].try_into().unwrap()) as u32;
                return (id, out[1].to_f32().unwrap());
            }
            assert_eq!((out[0].dtype, out[0].shape.clone()), (DType::F32, vec![tokens.len() as u32, 64]));
            hidden = vec![out[0].clone()];
        }
        unreachable!("no stages")
    }

    /// A session that starts from a cached prefix (the rows of a closed session copied, the
    /// rest stepped) gives the logits of the same prompt prefilled from nothing, on a fresh
    /// model: the copy carries every layer's rows, and positions go on after the prefix.
    #[test]
    fn a_cached_prefix_gives_the_logits_of_a_full_prefill() {
        use page_runtime::executors::cpu::CpuModel;
        use page_runtime::sessions::Sessions;
        use shared_proto::{Sampling, StepRow};
        let (g, w) = build(&TINY, &tiny_weights(&TINY), LIMITS, Outputs { logits: true }).unwrap();
        let vocab = page_runtime::sessions::vocab(&g);
        let step = |m: &CpuModel, s: &mut Sessions, id: u64, tokens: &[u32]| {
            let rows = [StepRow { session: id, tokens: tokens.to_vec(), sampling: Sampling::Greedy }];
            let plan = s.plan(&rows, vocab).unwrap();
            let out = m.run(&plan.inputs).unwrap();
            s.commit(&plan);
            (i32::from_le_bytes(out[0].data[..4].try_into().unwrap()) as u32, out[1].to_f32().unwrap())
        };
        let model = CpuModel::new(g.clone(), w.clone()).unwrap();
        let mut sessions = Sessions::new(g.kv.unwrap()).with_prefix_cache();
        // A first turn: a 20-token prompt, then 4 tokens decoded one at a time.
        let mut turn: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 50).collect();
        assert_eq!(sessions.open_reusing(1, 40, &turn).unwrap().copy, None);
        let (mut next, _) = step(&model, &mut sessions, 1, &turn);
        for _ in 0..4 {
            turn.push(next);
            next = step(&model, &mut sessions, 1, &[next]).0;
        }
        sessions.close(1);
        // The next turn: everything the first session stepped, and three new tokens.
        turn.extend([5, 9, 11]);
        let opened = sessions.open_reusing(2, 40, &turn).unwrap();
        let copy = opened.copy.expect("the first turn is a cached prefix");
        assert_eq!(copy.rows, 24, "20 prompt tokens and the 4 decoded ones fed back");
        model.copy_kv_rows(copy.from, copy.to, copy.rows).unwrap();
        let (id, cached) = step(&model, &mut sessions, 2, &turn[24..]);
        let fresh_model = CpuModel::new(g.clone(), w.clone()).unwrap();
        let mut fresh = Sessions::new(g.kv.unwrap());
        fresh.open(1, 40).unwrap();
        let (fresh_id, full) = step(&fresh_model, &mut fresh, 1, &turn);
        assert_eq!(id, fresh_id);
        // Rows decoded one at a time (the cached ones) and rows of one prefill differ only in
        // summation order: 1e-5 relative + 1e-5 absolute.
        for (i, (a, b)) in cached.iter().zip(&full).enumerate() {
            assert!((a - b).abs() <= 1e-5 + 1e-5 * b.abs(), "logit {i}: cached {a}, full prefill {b}");
        }
        // The copy is what makes them equal: without it the same step gives other logits.
        let mut s3 = Sessions::new(g.kv.unwrap());
        s3.open(1, 40).unwrap();
        let (_, uncopied) = step(&CpuModel::new(g.clone(), w).unwrap(), &mut s3, 1, &turn[24..]);
        assert!(uncopied.iter().zip(&full).any(|(a, b)| (a - b).abs() > 1e-3), "the prefix matters");
    }

    #[test]
    fn stages_hold_only_their_weights_and_chain_to_the_whole_model() {
        let weights = tiny_weights(&TINY);
        let logits = Outputs { logits: true };
        let whole = build(&TINY, &weights, LIMITS, logits).unwrap();
        let tokens = [3, 17, 42, 8, 1];
        let (id, expect) = forward(std::slice::from_ref(&whole), &tokens);
        let layered =
            [vec![Part::Embed, Part::Attention(0), Part::Ffn(0)], vec![Part::Attention(1), Part::Ffn(1), Part::Head]];
        let components = [
            vec![Part::Embed],
            vec![Part::Attention(0), Part::Ffn(0), Part::Attention(1), Part::Ffn(1)],
            vec![Part::Head],
        ];
        let attn_ffn = [
            vec![Part::Embed, Part::Attention(0)],
            vec![Part::Ffn(0)],
            vec![Part::Attention(1)],
            vec![Part::Ffn(1), Part::Head],
        ];
        let split: Vec<Vec<_>> = [&layered[..], &components[..], &attn_ffn[..]]
            .iter()
            .map(|layout| layout.iter().map(|p| build_stage(&TINY, &weights, LIMITS, p, logits).unwrap()).collect())
            .collect();
        for stages in &split {
            // The same ops in the same order on the same executor: the same bits.
            assert_eq!(forward(stages, &tokens), (id, expect.clone()));
            // Every weight is somewhere, each stage holds only its own; the tied embedding is
            // held by both ends when they are apart.
            let mut names: Vec<&str> =
                stages.iter().flat_map(|(g, _)| g.weights.iter().map(|w| w.name.as_str())).collect();
            let embd = names.iter().filter(|n| **n == "token_embd.weight").count();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), weights.len());
            assert_eq!(embd, 2, "embedding and head apart: both hold the tied table");
            let attention: u32 = stages.iter().map(|(g, _)| g.kv.unwrap().layers).sum();
            assert_eq!(attention, TINY.layers, "each layer's KV cache lives on the stage of its attention");
        }
        // The first stage takes ids, the others the hidden state; only the last samples.
        let (first, last) = (&split[0][0].0, &split[0][1].0);
        assert_eq!((first.inputs[0].name.as_str(), last.inputs[0].name.as_str()), ("ids", "hidden"));
        assert_eq!(first.outputs.len(), 1);
        assert!(matches!(op_of(last, last.outputs[0]), Op::Sample));
    }

    #[test]
    fn stage_parts_out_of_model_order_are_refused() {
        let w = tiny_weights(&TINY);
        for parts in [
            vec![],
            vec![Part::Attention(0), Part::Embed],
            vec![Part::Ffn(0), Part::Attention(0)],
            vec![Part::Head, Part::Ffn(1)],
            vec![Part::Attention(0), Part::Attention(0)],
            vec![Part::Attention(2)],
        ] {
            let e = build_stage(&TINY, &w, LIMITS, &parts, Outputs::default());
            assert!(e.is_err(), "{parts:?} was accepted");
        }
    }
}
