//! Minimal bindings for the WebNN calls used (web-sys 0.3 has no `ML*` types). Every builder
//! method can throw (an unsupported op or shape), so each returns `Result`.

use js_sys::{Object, Promise};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    pub type MLContext;
    pub type MLGraphBuilder;
    #[derive(Clone)]
    pub type MLOperand;
    pub type MLGraph;
    pub type MLTensor;

    #[wasm_bindgen(method, catch, js_name = createTensor)]
    pub fn create_tensor(this: &MLContext, desc: &Object) -> Result<Promise, JsValue>;
    #[wasm_bindgen(method, catch, js_name = writeTensor)]
    pub fn write_tensor(this: &MLContext, tensor: &MLTensor, data: &Object) -> Result<(), JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn dispatch(this: &MLContext, graph: &MLGraph, inputs: &Object, outputs: &Object) -> Result<(), JsValue>;
    #[wasm_bindgen(method, catch, js_name = readTensor)]
    pub fn read_tensor(this: &MLContext, tensor: &MLTensor) -> Result<Promise, JsValue>;
    /// `MLContext.destroy()`: the context is lost, its graphs and tensors with it.
    #[wasm_bindgen(method, catch)]
    pub fn destroy(this: &MLContext) -> Result<(), JsValue>;
    /// `MLContext.lost`: a promise of `MLContextLostInfo`; undefined in builds without it.
    #[wasm_bindgen(method, getter)]
    pub fn lost(this: &MLContext) -> JsValue;
    /// `MLContext.opSupportLimits()`: `preferredInputLayout` ("nchw" / "nhwc") among others.
    #[wasm_bindgen(method, catch, js_name = opSupportLimits)]
    pub fn op_support_limits(this: &MLContext) -> Result<JsValue, JsValue>;

    /// `MLGraph.destroy()`: frees the compiled graph (its intermediate buffers) now instead of at
    /// garbage collection, which does not see memory held by the ML service.
    #[wasm_bindgen(method, catch, js_name = destroy)]
    pub fn destroy_graph(this: &MLGraph) -> Result<(), JsValue>;
    /// `MLTensor.destroy()`: frees the tensor's buffer now.
    #[wasm_bindgen(method, catch, js_name = destroy)]
    pub fn destroy_tensor(this: &MLTensor) -> Result<(), JsValue>;

    #[wasm_bindgen(constructor, catch)]
    pub fn new(context: &MLContext) -> Result<MLGraphBuilder, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn input(this: &MLGraphBuilder, name: &str, desc: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn constant(this: &MLGraphBuilder, desc: &Object, data: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn build(this: &MLGraphBuilder, outputs: &Object) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    pub fn matmul(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn gemm(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn add(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn sub(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn mul(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn div(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn max(this: &MLGraphBuilder, a: &MLOperand, b: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn gelu(this: &MLGraphBuilder, x: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch, js_name = layerNormalization)]
    pub fn layer_normalization(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn softmax(this: &MLGraphBuilder, x: &MLOperand, axis: u32) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch, js_name = reduceSum)]
    pub fn reduce_sum(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch, js_name = reduceL2)]
    pub fn reduce_l2(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn gather(
        this: &MLGraphBuilder,
        x: &MLOperand,
        indices: &MLOperand,
        opts: &Object,
    ) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn reshape(this: &MLGraphBuilder, x: &MLOperand, shape: &js_sys::Array) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn transpose(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn sigmoid(this: &MLGraphBuilder, x: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn sqrt(this: &MLGraphBuilder, x: &MLOperand) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch, js_name = reduceMean)]
    pub fn reduce_mean(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn slice(
        this: &MLGraphBuilder,
        x: &MLOperand,
        starts: &js_sys::Array,
        sizes: &js_sys::Array,
    ) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn concat(this: &MLGraphBuilder, inputs: &js_sys::Array, axis: u32) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch, js_name = scatterND)]
    pub fn scatter_nd(
        this: &MLGraphBuilder,
        x: &MLOperand,
        indices: &MLOperand,
        updates: &MLOperand,
    ) -> Result<MLOperand, JsValue>;
    /// `conv2d(input, filter, {padding, strides, groups, inputLayout, filterLayout, bias})`.
    #[wasm_bindgen(method, catch)]
    pub fn conv2d(
        this: &MLGraphBuilder,
        x: &MLOperand,
        filter: &MLOperand,
        opts: &Object,
    ) -> Result<MLOperand, JsValue>;
    /// `clamp(x, {minValue, maxValue})`.
    #[wasm_bindgen(method, catch)]
    pub fn clamp(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    /// `averagePool2d(x, {windowDimensions, layout})`.
    #[wasm_bindgen(method, catch, js_name = averagePool2d)]
    pub fn average_pool2d(this: &MLGraphBuilder, x: &MLOperand, opts: &Object) -> Result<MLOperand, JsValue>;
    #[wasm_bindgen(method, catch, js_name = argMax)]
    pub fn arg_max(this: &MLGraphBuilder, x: &MLOperand, axis: u32, opts: &Object) -> Result<MLOperand, JsValue>;
}
