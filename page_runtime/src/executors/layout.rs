//! Conv filter layouts for backends that prefer channels-last values (WebNN on TFLite/XNNPACK:
//! `opSupportLimits().preferredInputLayout == "nhwc"`). Pure, so the decisions are unit-tested
//! natively: which weights are conv filters that can be stored in the backend's layout once, at
//! load, instead of being transposed in every graph, and the byte reordering itself.

use shared_proto::{DType, Graph, Op, Tensor, ValueRef};

/// A filter layout of WebNN's `conv2d` with `inputLayout: "nhwc"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterLayout {
    /// `[O, kh, kw, C/groups]`: regular and grouped convolutions (TFLite CONV_2D).
    Ohwi,
    /// `[1, kh, kw, O]`: depthwise (`C/groups == 1`, `groups == O`; TFLite DEPTHWISE_CONV_2D).
    Ihwo,
}

impl FilterLayout {
    /// The layout WebNN wants for a filter of shape `[O, C/groups, kh, kw]` under `groups`.
    pub fn for_filter(w: &[u32], groups: u32) -> FilterLayout {
        if w.len() == 4 && w[1] == 1 && groups == w[0] { FilterLayout::Ihwo } else { FilterLayout::Ohwi }
    }

    /// WebNN's name for it.
    pub fn name(self) -> &'static str {
        match self {
            FilterLayout::Ohwi => "ohwi",
            FilterLayout::Ihwo => "ihwo",
        }
    }

    /// The permutation taking an `[O, I, kh, kw]` (oihw) filter to this layout.
    pub fn perm_from_oihw(self) -> [u32; 4] {
        match self {
            FilterLayout::Ohwi => [0, 2, 3, 1],
            FilterLayout::Ihwo => [1, 2, 3, 0],
        }
    }
}

/// Per weight: the layout to store it in, when it is an f32 4-D filter read only as the filter
/// of `Conv2d` nodes that all want the same layout. Anything else (`None`) stays as declared.
pub fn filter_layouts(g: &Graph) -> Vec<Option<FilterLayout>> {
    let mut out: Vec<Option<Option<FilterLayout>>> = vec![None; g.weights.len()];
    let mut seen = |v: u32, want: Option<FilterLayout>| {
        if let ValueRef::Weight(w) = g.value(v) {
            out[w] = Some(match out[w] {
                None => want,
                Some(prev) if prev == want => want,
                Some(_) => None,
            });
        }
    };
    for n in &g.nodes {
        for (i, &a) in n.args.iter().enumerate() {
            let want = match &n.op {
                Op::Conv2d { groups, .. } if i == 1 => {
                    let decl = match g.value(a) {
                        ValueRef::Weight(w) => &g.weights[w],
                        _ => continue,
                    };
                    (decl.dtype == DType::F32 && decl.shape.len() == 4)
                        .then(|| FilterLayout::for_filter(&decl.shape, *groups))
                }
                _ => None,
            };
            seen(a, want);
        }
    }
    for &o in &g.outputs {
        seen(o, None);
    }
    out.into_iter().map(Option::flatten).collect()
}

/// `t` (an f32 `[O, I, kh, kw]` filter) reordered into `layout`, with its new shape.
pub fn reorder_filter(t: &Tensor, layout: FilterLayout) -> Tensor {
    let [o, i, kh, kw] = t.shape[..] else { panic!("a 4-D filter, got {:?}", t.shape) };
    let (o, i, kh, kw) = (o as usize, i as usize, kh as usize, kw as usize);
    let src = &t.data;
    let mut dst = vec![0u8; src.len()];
    for a in 0..o {
        for b in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    let from = ((a * i + b) * kh + y) * kw + x;
                    let to = match layout {
                        FilterLayout::Ohwi => ((a * kh + y) * kw + x) * i + b,
                        FilterLayout::Ihwo => ((b * kh + y) * kw + x) * o + a,
                    };
                    dst[to * 4..to * 4 + 4].copy_from_slice(&src[from * 4..from * 4 + 4]);
                }
            }
        }
    }
    let p = layout.perm_from_oihw();
    let shape = p.iter().map(|&d| t.shape[d as usize]).collect();
    Tensor { dtype: t.dtype, shape, data: dst.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{Dim, InputDecl, Node, WeightDecl};

    fn wd(name: &str, shape: &[u32]) -> WeightDecl {
        WeightDecl { name: name.into(), dtype: DType::F32, shape: shape.to_vec(), hash: Default::default() }
    }

    #[test]
    fn filters_read_only_by_convs_get_their_layout() {
        let conv = |groups, bias| Op::Conv2d { stride: [1, 1], pad: [1; 4], groups, bias };
        let g = Graph {
            inputs: vec![InputDecl { name: "x".into(), dtype: DType::F32, dims: vec![Dim::Fixed(1); 4] }],
            // 1: full filter, 2: depthwise filter, 3: bias, 4: a filter also added elsewhere
            weights: vec![wd("w", &[8, 4, 3, 3]), wd("dw", &[8, 1, 3, 3]), wd("b", &[8]), wd("odd", &[8, 8, 1, 1])],
            nodes: vec![
                Node { op: conv(1, false), args: vec![0, 1] },   // 5
                Node { op: conv(8, true), args: vec![5, 2, 3] }, // 6
                Node { op: conv(1, false), args: vec![6, 4] },   // 7
                Node { op: Op::Add, args: vec![7, 4] },          // 8
            ],
            outputs: vec![8],
            kv: None,
        };
        assert_eq!(filter_layouts(&g), [Some(FilterLayout::Ohwi), Some(FilterLayout::Ihwo), None, None]);
    }

    #[test]
    fn reordering_moves_every_element_where_the_layout_says() {
        let (o, i, kh, kw) = (3usize, 2usize, 2usize, 3usize);
        let vals: Vec<f32> = (0..o * i * kh * kw).map(|v| v as f32).collect();
        let t = Tensor::from_f32(vec![o as u32, i as u32, kh as u32, kw as u32], &vals);
        let ohwi = reorder_filter(&t, FilterLayout::Ohwi);
        assert_eq!(ohwi.shape, [3, 2, 3, 2]);
        let ihwo = reorder_filter(&t, FilterLayout::Ihwo);
        assert_eq!(ihwo.shape, [2, 2, 3, 3]);
        let (a, b) = (ohwi.to_f32().unwrap(), ihwo.to_f32().unwrap());
        for oc in 0..o {
            for ic in 0..i {
                for y in 0..kh {
                    for x in 0..kw {
                        let v = vals[((oc * i + ic) * kh + y) * kw + x];
                        assert_eq!(a[((oc * kh + y) * kw + x) * i + ic], v);
                        assert_eq!(b[((ic * kh + y) * kw + x) * o + oc], v);
                    }
                }
            }
        }
    }
}
