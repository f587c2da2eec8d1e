//! Cross-attention memory on WebNN (`Request::PutMemory`, read by `Op::CrossAttention`): per
//! cross-attention layer, one keys tensor `[slots, heads, d, rows]` (transposed per head, so a
//! step's scores are one matmul with no transpose of 1500 rows per step) and one values tensor
//! `[slots, heads, rows, d]`. A slot holds one session's memory, found by the session's first
//! cache row. Unlike the self-attention cache these tensors are not swapped between steps:
//! only `PutMemory` writes them, once per session, so a step copies none of it.
//!
//! WebNN writes whole tensors only: a memory put beside other slots reads the tensor back,
//! replaces its slot and writes it all (once per session, not per step). Puts take turns
//! (`NnModel::memory_turn`) so two of them never interleave that read and write.

use std::rc::Rc;

use js_sys::{Object, Reflect};
use shared_proto::{DType, ErrorKind, Op, RemoteError, Tensor};

use super::ops::mem_name;
use super::{NnModel, NnTensor, create_tensor, internal, wasm_view};

/// A slot no session holds any more.
const FREE: u32 = u32::MAX;

/// What the graph's cross-attention reads: its layers (ascending) and their common shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemLayout {
    layers: Vec<u32>,
    heads: u32,
    rows: u32,
    width: u32,
}

impl MemLayout {
    /// Bytes of one slot of one tensor.
    fn block(&self) -> usize {
        self.rows as usize * self.width as usize * 4
    }
}

/// The memory tensors and which session's rows each slot holds.
pub(super) struct Memory {
    /// Per slot: the first cache row of the session it holds (`FREE` once overwritten).
    starts: Vec<u32>,
    /// Per layer of the layout: (keys, values).
    tensors: Vec<(Rc<NnTensor>, Rc<NnTensor>)>,
    layout: MemLayout,
}

impl Memory {
    pub fn slots(&self) -> u32 {
        self.starts.len() as u32
    }

    /// Bind every layer's memory as the step graph's inputs.
    pub fn bind(&self, ins: &Object) -> Result<(), RemoteError> {
        for (&l, (k, v)) in self.layout.layers.iter().zip(&self.tensors) {
            Reflect::set(ins, &mem_name('k', l).into(), &k.0).map_err(|e| internal("memory", e))?;
            Reflect::set(ins, &mem_name('v', l).into(), &v.0).map_err(|e| internal("memory", e))?;
        }
        Ok(())
    }

    fn slot_of(&self, start: u32) -> Option<usize> {
        self.starts.iter().position(|&s| s == start)
    }
}

fn bad(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, msg)
}

/// One layer's keys `[rows, width]` as `[heads, d, rows]` and values as `[heads, rows, d]`
/// (little-endian f32 bytes in, out).
fn lay_out(k: &[u8], v: &[u8], heads: usize, rows: usize) -> (Vec<u8>, Vec<u8>) {
    let width = k.len() / 4 / rows.max(1);
    let d = width / heads.max(1);
    let (mut kt, mut vt) = (vec![0u8; k.len()], vec![0u8; v.len()]);
    for r in 0..rows {
        for h in 0..heads {
            for j in 0..d {
                let from = 4 * (r * width + h * d + j);
                let to_k = 4 * ((h * d + j) * rows + r);
                let to_v = 4 * ((h * rows + r) * d + j);
                kt[to_k..to_k + 4].copy_from_slice(&k[from..from + 4]);
                vt[to_v..to_v + 4].copy_from_slice(&v[from..from + 4]);
            }
        }
    }
    (kt, vt)
}

impl NnModel {
    /// The graph's cross-attention layers and shape; none without cross-attention.
    pub(super) fn memory_layout(&self) -> Option<MemLayout> {
        let g = &self.graph;
        let kv = g.kv?;
        let mut layers = Vec::new();
        let mut shape = None;
        for n in &g.nodes {
            if let Op::CrossAttention { layer, heads, rows } = n.op {
                layers.push(layer);
                shape.get_or_insert((heads, rows));
            }
        }
        let (heads, rows) = shape?;
        layers.sort_unstable();
        layers.dedup();
        Some(MemLayout { layers, heads, rows, width: kv.kv_heads * kv.head_dim })
    }

    /// Write a session's memory `[layers, 2, rows, width]` (per layer its keys, then its values)
    /// for cache layers `first_layer..` of the session starting at cache row `start`; the bytes.
    pub async fn put_memory(&self, first_layer: usize, start: usize, memory: &Tensor) -> Result<u64, RemoteError> {
        self.nn.alive()?;
        let Some(layout) = self.memory_layout() else {
            return Err(bad("the model has no cross-attention memory".into()));
        };
        let &[layers, two, rows, w] = memory.shape.as_slice() else {
            return Err(bad(format!("a memory is [layers, 2, rows, width], got {:?}", memory.shape)));
        };
        let want: Vec<u32> = (first_layer as u32..first_layer as u32 + layers).collect();
        if memory.dtype != DType::F32
            || two != 2
            || w != layout.width
            || rows != layout.rows
            || memory.data.len() != layers as usize * 2 * layout.block()
        {
            return Err(bad(format!(
                "a memory {:?} does not fit {} rows of {} values per layer",
                memory.shape, layout.rows, layout.width
            )));
        }
        if want != layout.layers {
            return Err(bad(format!(
                "a memory for layers {want:?}: the graph's cross-attention reads layers {:?} (WebNN takes them all at once)",
                layout.layers
            )));
        }
        let max = self.graph.kv.map_or(0, |kv| kv.max_tokens) as usize;
        if start + rows as usize > max {
            return Err(bad(format!("a memory of {rows} rows at row {start} is outside the cache of {max} rows")));
        }
        self.write_slot(&layout, start as u32, Some(memory)).await?;
        Ok(memory.data.len() as u64)
    }

    /// The memory a step reads and each of its tokens' slots (`starts`: the tokens' first cache
    /// rows). A session no memory was put for gets a zeroed slot: the CPU executor reads zeros
    /// from rows no `PutMemory` wrote (the warm-up run at load has no memory).
    pub(super) async fn memory_slots(
        &self,
        layout: MemLayout,
        starts: &[i32],
    ) -> Result<(Rc<Memory>, Vec<i32>), RemoteError> {
        for &s in starts {
            let known = self.memory.borrow().as_ref().is_some_and(|m| m.slot_of(s as u32).is_some());
            if !known {
                self.write_slot(&layout, s as u32, None).await?;
            }
        }
        let mem = self.memory.borrow().clone().ok_or_else(|| internal("memory", "no memory tensors".into()))?;
        let slots = starts.iter().map(|&s| mem.slot_of(s as u32).map_or(0, |i| i as i32)).collect();
        Ok((mem, slots))
    }

    /// Write `memory` (zeros when none) into the slot of the session at `start`: a slot whose
    /// rows overlap that session's belonged to a closed session (open sessions' rows never
    /// overlap) and is reused; else a free one, else the tensors grow by a slot.
    async fn write_slot(&self, layout: &MemLayout, start: u32, memory: Option<&Tensor>) -> Result<(), RemoteError> {
        let _turn = self.memory_turn.lock().await;
        let old = self.memory.borrow().clone().filter(|m| &m.layout == layout);
        let mut starts = old.as_ref().map_or_else(Vec::new, |m| m.starts.clone());
        let overlaps = |s: u32| s != FREE && s < start + layout.rows && start < s + layout.rows;
        let mut reuse = None;
        for (i, s) in starts.iter_mut().enumerate() {
            if overlaps(*s) {
                *s = FREE;
                reuse.get_or_insert(i);
            }
        }
        let slot = match reuse.or_else(|| starts.iter().position(|&s| s == FREE)) {
            Some(i) => i,
            None => {
                starts.push(FREE);
                starts.len() - 1
            }
        };
        starts[slot] = start;
        let slots = starts.len();
        let grown = old.as_ref().is_none_or(|m| m.starts.len() != slots);
        let ctx = &self.nn.context;
        let block = layout.block();
        let heads = layout.heads as usize;
        let rows = layout.rows as usize;
        let mut tensors = Vec::new();
        for (li, _) in layout.layers.iter().enumerate() {
            let (k, v) = match memory {
                Some(m) => {
                    let at = 2 * li * block;
                    lay_out(&m.data[at..at + block], &m.data[at + block..at + 2 * block], heads, rows)
                }
                None => (vec![0u8; block], vec![0u8; block]),
            };
            let d = layout.width / layout.heads;
            let (kt, vt) = if grown {
                let k_shape = [slots as u32, layout.heads, d, layout.rows];
                let v_shape = [slots as u32, layout.heads, layout.rows, d];
                (
                    Rc::new(create_tensor(ctx, DType::F32, &k_shape, &["readable", "writable"]).await?),
                    Rc::new(create_tensor(ctx, DType::F32, &v_shape, &["readable", "writable"]).await?),
                )
            } else {
                let (k, v) = &old.as_ref().expect("not grown: old tensors").tensors[li];
                (k.clone(), v.clone())
            };
            for (fresh, from, to) in
                [(k, old.as_ref().map(|m| &m.tensors[li].0), &kt), (v, old.as_ref().map(|m| &m.tensors[li].1), &vt)]
            {
                let all = if slots == 1 {
                    fresh
                } else {
                    // The other slots' memories as they are (read back: WebNN writes whole tensors).
                    let mut all = match from {
                        Some(t) => super::step::read(ctx, t).await?,
                        None => Vec::new(),
                    };
                    all.resize(slots * block, 0);
                    all[slot * block..(slot + 1) * block].copy_from_slice(&fresh);
                    all
                };
                ctx.write_tensor(&to.0, &wasm_view(&all)).map_err(|e| internal("writeTensor", e))?;
            }
            tensors.push((kt, vt));
        }
        *self.memory.borrow_mut() = Some(Rc::new(Memory { starts, tensors, layout: layout.clone() }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    // The lib's own tests (this module is wasm-only): run by `wasm-pack test` in the browser.
    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

    #[wasm_bindgen_test]
    fn keys_are_laid_out_per_head_transposed_and_values_per_head() {
        let (rows, heads, d) = (3usize, 2usize, 2usize);
        let width = heads * d;
        let f = |x: f32| x.to_le_bytes();
        let k: Vec<u8> = (0..rows * width).flat_map(|i| f(i as f32)).collect();
        let v: Vec<u8> = (0..rows * width).flat_map(|i| f(100.0 + i as f32)).collect();
        let (kt, vt) = lay_out(&k, &v, heads, rows);
        let get = |b: &[u8], i: usize| f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
        for r in 0..rows {
            for h in 0..heads {
                for j in 0..d {
                    let src = (r * width + h * d + j) as f32;
                    assert_eq!(get(&kt, (h * d + j) * rows + r), src);
                    assert_eq!(get(&vt, (h * rows + r) * d + j), 100.0 + src);
                }
            }
        }
    }
}
