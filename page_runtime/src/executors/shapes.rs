//! Shape and dtype inference per op, shared by every executor: a bad graph or input fails the
//! same way (as `BadInput`) whichever backend runs it.

use shared_proto::{DType, ErrorKind, Op, RemoteError};

fn bad(op: &Op, msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, format!("{}: {msg}", op.name()))
}

/// Most elements one value may have: 2^28 (1 GiB of f32, the largest buffer WebGPU offers here).
/// Checked on every op's output, so no graph can make an executor size a buffer by a product
/// that overflowed (the fuzzer found a Reshape whose element count wrapped past 2^64).
pub const MAX_VALUE_ELEMENTS: u64 = 1 << 28;

/// Elements of `shape`, or None past `MAX_VALUE_ELEMENTS` (overflow included).
fn elements(shape: &[u32]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).filter(|&n| n <= MAX_VALUE_ELEMENTS)
}

/// Output shape and dtype of `op` given its arguments' shapes and dtypes.
pub fn infer(op: &Op, shapes: &[&[u32]], dtypes: &[DType]) -> Result<(Vec<u32>, DType), RemoteError> {
    let (out, dtype) = infer_op(op, shapes, dtypes)?;
    if elements(&out).is_none() {
        return Err(bad(op, format!("output {out:?} has more than {MAX_VALUE_ELEMENTS} elements")));
    }
    Ok((out, dtype))
}

fn infer_op(op: &Op, shapes: &[&[u32]], dtypes: &[DType]) -> Result<(Vec<u32>, DType), RemoteError> {
    let want_f32 = |idx: &[usize]| -> Result<(), RemoteError> {
        for &i in idx {
            if dtypes[i] != DType::F32 {
                return Err(bad(op, format!("argument {i} must be f32, got {:?}", dtypes[i])));
            }
        }
        Ok(())
    };
    // A weight operand: f32, or a packed dtype (f16, block-quantized) whose kernels widen it.
    let want_weight = |i: usize| -> Result<(), RemoteError> {
        if dtypes[i] != DType::F32 && !dtypes[i].is_packed() {
            return Err(bad(op, format!("argument {i} must be f32, f16 or block-quantized, got {:?}", dtypes[i])));
        }
        Ok(())
    };
    let want_i32 = |idx: &[usize]| -> Result<(), RemoteError> {
        for &i in idx {
            if dtypes[i] != DType::I32 {
                return Err(bad(op, format!("argument {i} must be i32, got {:?}", dtypes[i])));
            }
        }
        Ok(())
    };
    let last = |s: &[u32]| s.last().copied().unwrap_or(0);
    match op {
        Op::MatMul => {
            want_f32(&[0, 1])?;
            let (a, b) = (shapes[0], shapes[1]);
            if a.len() < 2 || b.len() != 2 || a[a.len() - 1] != b[0] {
                return Err(bad(op, format!("needs a[.., M, K] and b[K, N], got {a:?} and {b:?}")));
            }
            let mut out = a.to_vec();
            *out.last_mut().expect("rank ≥ 2") = b[1];
            Ok((out, DType::F32))
        }
        Op::Linear { bias } => {
            want_f32(if *bias { &[0, 2] } else { &[0] })?;
            want_weight(1)?;
            let (x, w) = (shapes[0], shapes[1]);
            if x.is_empty() || w.len() != 2 || last(x) != w[1] {
                return Err(bad(op, format!("needs x[.., K] and w[N, K], got {x:?} and {w:?}")));
            }
            if *bias && shapes[2] != [w[0]] {
                return Err(bad(op, format!("bias must be [{}], got {:?}", w[0], shapes[2])));
            }
            let mut out = x.to_vec();
            *out.last_mut().expect("rank ≥ 1") = w[0];
            Ok((out, DType::F32))
        }
        Op::Add | Op::Mul => {
            want_f32(&[0, 1])?;
            let (a, b) = (shapes[0], shapes[1]);
            if b.len() > a.len() || a[a.len() - b.len()..] != *b {
                return Err(bad(op, format!("b {b:?} must be a suffix of a {a:?}")));
            }
            Ok((a.to_vec(), DType::F32))
        }
        Op::Gelu | Op::Softmax | Op::L2Normalize { .. } => {
            want_f32(&[0])?;
            if shapes[0].is_empty() {
                return Err(bad(op, "needs rank ≥ 1".into()));
            }
            Ok((shapes[0].to_vec(), DType::F32))
        }
        Op::LayerNorm { .. } => {
            want_f32(&[0, 1, 2])?;
            let h = last(shapes[0]);
            if shapes[0].is_empty() || shapes[1] != [h] || shapes[2] != [h] {
                return Err(bad(op, format!("needs x[.., {h}], gamma[{h}], beta[{h}], got {shapes:?}")));
            }
            Ok((shapes[0].to_vec(), DType::F32))
        }
        Op::MeanPool => {
            want_f32(&[0, 1])?;
            match (shapes[0], shapes[1]) {
                (&[b, s, h], &[mb, ms]) if b == mb && s == ms => Ok((vec![b, h], DType::F32)),
                (x, m) => Err(bad(op, format!("needs x[B, S, H] and mask[B, S], got {x:?} and {m:?}"))),
            }
        }
        Op::Gather => {
            want_weight(0)?;
            if dtypes[1] != DType::I32 {
                return Err(bad(op, format!("ids must be i32, got {:?}", dtypes[1])));
            }
            if shapes[0].len() != 2 {
                return Err(bad(op, format!("table must be [V, H], got {:?}", shapes[0])));
            }
            let mut out = shapes[1].to_vec();
            out.push(shapes[0][1]);
            Ok((out, DType::F32))
        }
        // Blocks run along the last axis of the weight they came with: regrouping or permuting
        // axes would cut them, so packed values (f16 too: no kernel moves halves) only feed
        // Linear and Gather.
        Op::Reshape { .. } | Op::Transpose { .. } if dtypes[0].is_packed() => {
            Err(bad(op, format!("cannot move the axes of a {:?} value", dtypes[0])))
        }
        Op::Reshape { shape } => {
            let cannot = || bad(op, format!("cannot reshape {:?} to {shape:?}", shapes[0]));
            let total = elements(shapes[0]).ok_or_else(cannot)?;
            let known =
                shape.iter().filter(|&&d| d > 0).try_fold(1u64, |n, &d| n.checked_mul(d as u64)).ok_or_else(cannot)?;
            let out: Vec<u32> = if shape.contains(&-1) {
                if known == 0 || !total.is_multiple_of(known) {
                    return Err(cannot());
                }
                shape.iter().map(|&d| if d == -1 { (total / known) as u32 } else { d as u32 }).collect()
            } else {
                shape.iter().map(|&d| d as u32).collect()
            };
            if elements(&out) != Some(total) {
                return Err(bad(op, format!("cannot reshape {:?} to {shape:?}", shapes[0])));
            }
            Ok((out, dtypes[0]))
        }
        Op::Transpose { perm } => {
            if perm.len() != shapes[0].len() {
                return Err(bad(op, format!("perm {perm:?} for rank {}", shapes[0].len())));
            }
            Ok((perm.iter().map(|&p| shapes[0][p as usize]).collect(), dtypes[0]))
        }
        Op::SiluMul => {
            want_f32(&[0, 1])?;
            if shapes[0].is_empty() || shapes[0] != shapes[1] {
                return Err(bad(op, format!("needs gate and up of one shape, got {shapes:?}")));
            }
            Ok((shapes[0].to_vec(), DType::F32))
        }
        Op::RmsNorm { .. } => {
            want_f32(&[0, 1])?;
            let h = last(shapes[0]);
            if shapes[0].is_empty() || shapes[1] != [h] {
                return Err(bad(op, format!("needs x[.., {h}] and gamma[{h}], got {shapes:?}")));
            }
            Ok((shapes[0].to_vec(), DType::F32))
        }
        Op::Rope { heads, .. } => {
            want_f32(&[0])?;
            want_i32(&[1])?;
            match (shapes[0], shapes[1]) {
                (&[t, w], &[pt]) if t == pt && w % heads == 0 && (w / heads) % 2 == 0 => Ok((vec![t, w], DType::F32)),
                _ => Err(bad(op, format!("needs x[T, {heads}·d] with d even and pos[T], got {shapes:?}"))),
            }
        }
        Op::Argmax => {
            want_f32(&[0])?;
            match shapes[0] {
                &[r, v] if v > 0 => Ok((vec![r], DType::I32)),
                s => Err(bad(op, format!("needs logits[R, V], got {s:?}"))),
            }
        }
        Op::Sample => {
            want_f32(&[0, 1])?;
            match (shapes[0], shapes[1]) {
                (&[r, v], &[pr, 4]) if v > 0 && r == pr => Ok((vec![r], DType::I32)),
                _ => Err(bad(op, format!("needs logits[R, V] and params[R, 4], got {shapes:?}"))),
            }
        }
        Op::CachedAttention { heads, kv_heads, .. } => {
            want_f32(&[0, 1, 2])?;
            want_i32(&[3, 4])?;
            match (shapes[0], shapes[1]) {
                (&[t, qw], &[kt, kw])
                    if qw % heads == 0
                        && kw % kv_heads == 0
                        && qw / heads == kw / kv_heads
                        && kt == t
                        && shapes[2] == shapes[1]
                        && shapes[3] == [t]
                        && shapes[4] == [t] =>
                {
                    Ok((vec![t, qw], DType::F32))
                }
                _ => Err(bad(
                    op,
                    format!("needs q[T, {heads}·d], k = v [T, {kv_heads}·d], pos[T], kv_start[T]; got {shapes:?}"),
                )),
            }
        }
        Op::CrossAttention { heads, .. } => {
            want_f32(&[0])?;
            want_i32(&[1])?;
            match (shapes[0], shapes[1]) {
                (&[t, qw], &[st]) if qw % heads == 0 && st == t => Ok((vec![t, qw], DType::F32)),
                _ => Err(bad(op, format!("needs q[T, {heads}·d], kv_start[T]; got {shapes:?}"))),
            }
        }
        Op::Attention { heads } => {
            want_f32(&[0, 1, 2, 3])?;
            match (shapes[0], shapes[3]) {
                (&[b, s, h], &[mb, ms])
                    if shapes[1] == shapes[0] && shapes[2] == shapes[0] && mb == b && ms == s && h % heads == 0 =>
                {
                    Ok((vec![b, s, h], DType::F32))
                }
                _ => Err(bad(
                    op,
                    format!("needs q = k = v [B, S, H] with H divisible by {heads}, mask [B, S]; got {shapes:?}"),
                )),
            }
        }
        Op::Conv2d { stride, pad, groups, bias } => {
            want_f32(if *bias { &[0, 1, 2] } else { &[0, 1] })?;
            let (x, w) = (shapes[0], shapes[1]);
            let (&[n, c, h, wd], &[o, cg, kh, kw]) = (x, w) else {
                return Err(bad(op, format!("needs x[N, C, H, W] and w[O, C/groups, kh, kw], got {x:?} and {w:?}")));
            };
            let g = *groups;
            if g == 0 || stride[0] == 0 || stride[1] == 0 || c % g != 0 || o % g != 0 || cg != c / g {
                return Err(bad(op, format!("x {x:?}, w {w:?}, groups {g}, stride {stride:?} do not fit")));
            }
            if *bias && shapes[2] != [o] {
                return Err(bad(op, format!("bias must be [{o}], got {:?}", shapes[2])));
            }
            let (ph, pw) = (h as u64 + pad[0] as u64 + pad[2] as u64, wd as u64 + pad[1] as u64 + pad[3] as u64);
            if ph < kh as u64 || pw < kw as u64 || kh == 0 || kw == 0 {
                return Err(bad(op, format!("kernel {kh}x{kw} larger than the padded input {ph}x{pw}")));
            }
            let ho = ((ph - kh as u64) / stride[0] as u64 + 1) as u32;
            let wo = ((pw - kw as u64) / stride[1] as u64 + 1) as u32;
            Ok((vec![n, o, ho, wo], DType::F32))
        }
        Op::Clamp { .. } => {
            want_f32(&[0])?;
            Ok((shapes[0].to_vec(), DType::F32))
        }
        Op::GlobalAvgPool => {
            want_f32(&[0])?;
            match shapes[0] {
                &[n, c, h, w] if h > 0 && w > 0 => Ok((vec![n, c], DType::F32)),
                other => Err(bad(op, format!("needs x[N, C, H, W] with H, W > 0, got {other:?}"))),
            }
        }
    }
}

/// Shapes of every value of `g` for inputs of `input_shapes` (weights as declared).
pub fn graph_shapes(g: &shared_proto::Graph, input_shapes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, RemoteError> {
    let mut shapes: Vec<Vec<u32>> = input_shapes.to_vec();
    let mut dtypes: Vec<DType> = g.inputs.iter().map(|d| d.dtype).collect();
    for w in &g.weights {
        shapes.push(w.shape.clone());
        dtypes.push(w.dtype);
    }
    for (ni, n) in g.nodes.iter().enumerate() {
        let s: Vec<&[u32]> = n.args.iter().map(|&a| shapes[a as usize].as_slice()).collect();
        let d: Vec<DType> = n.args.iter().map(|&a| dtypes[a as usize]).collect();
        let (shape, dtype) =
            infer(&n.op, &s, &d).map_err(|e| RemoteError::new(e.kind, format!("node {ni}: {}", e.message)))?;
        shapes.push(shape);
        dtypes.push(dtype);
    }
    Ok(shapes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_past_the_value_limit_are_bad_input_not_overflow() {
        // The fuzzer's reproducer (corpus/graph/bug_infer_reshape_overflow): its target's known
        // entries multiply past 2^64.
        let op = Op::Reshape { shape: vec![1 << 29, 1 << 15, 1 << 30, 1, 1] };
        let e = infer(&op, &[&[4, 4]], &[DType::F32]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput);
        let e = infer(&Op::Reshape { shape: vec![-1] }, &[&[1 << 20, 1 << 20]], &[DType::F32]).unwrap_err();
        assert!(e.message.contains("cannot reshape"), "{}", e.message);
        // A value growing past MAX_VALUE_ELEMENTS through an op is refused where it appears.
        let e = infer(&Op::Linear { bias: false }, &[&[1 << 20, 4], &[1 << 10, 4]], &[DType::F32; 2]).unwrap_err();
        assert!(e.message.contains("more than 268435456 elements"), "{}", e.message);
        // Within the limit, inference is unchanged.
        let (out, _) = infer(&Op::Reshape { shape: vec![-1, 8] }, &[&[4, 4, 4]], &[DType::F32]).unwrap();
        assert_eq!(out, vec![8, 8]);
    }

    #[test]
    fn quantized_values_keep_their_axes() {
        for op in [Op::Reshape { shape: vec![-1, 16] }, Op::Transpose { perm: vec![1, 0] }] {
            let e = infer(&op, &[&[2, 32]], &[DType::Q4_1]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadInput, "{op:?}");
            assert!(infer(&op, &[&[2, 32]], &[DType::F32]).is_ok());
        }
    }
}
