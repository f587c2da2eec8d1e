//! Buffer pooling: WebGPU buffer creation is expensive, and kernels are called in loops with the
//! same sizes. Buffers are bucketed by kind and power-of-two size and handed back on drop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Deref;
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    StorageIn,
    StorageOut,
    Uniform,
    Readback,
}

impl Kind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            // COPY_SRC too: an input (or a reshape of one) can be a graph output.
            Kind::StorageIn => U::STORAGE | U::COPY_DST | U::COPY_SRC,
            Kind::StorageOut => U::STORAGE | U::COPY_SRC,
            Kind::Uniform => U::UNIFORM | U::COPY_DST,
            Kind::Readback => U::MAP_READ | U::COPY_DST,
        }
    }
}

type Key = (Kind, u64);

#[derive(Default)]
struct Free {
    buffers: HashMap<Key, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Free buffers by (kind, bucket size). A run takes back what it releases while it records
/// (however much), and after each submission the pool is trimmed to `max_bytes` so idle memory
/// stays bounded: a buffer released mid-recording may still be bound by a dispatch not yet
/// submitted, and destroying it then would fail that submission.
pub struct BufferPool {
    free: Rc<RefCell<Free>>,
    max_bytes: u64,
}

/// A buffer on loan from the pool; returned on drop.
pub struct Pooled {
    buffer: Option<wgpu::Buffer>,
    key: Key,
    free: Rc<RefCell<Free>>,
}

impl Deref for Pooled {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl Pooled {
    /// Destroy instead of returning to the pool: for a buffer left in an unknown state (a map
    /// that failed or is still pending after an error).
    pub fn discard(mut self) {
        if let Some(b) = self.buffer.take() {
            b.destroy();
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else { return };
        let mut free = self.free.borrow_mut();
        free.bytes += self.key.1;
        free.buffers.entry(self.key).or_default().push(buffer);
    }
}

/// Bucket size: the next power of two, at least 256 bytes (uniform/storage alignment).
pub fn bucket(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two()
}

impl BufferPool {
    pub fn new(max_bytes: u64) -> Self {
        BufferPool { free: Rc::default(), max_bytes }
    }

    pub fn acquire(&self, device: &wgpu::Device, bytes: u64, kind: Kind) -> Pooled {
        let key = (kind, bucket(bytes));
        let reused = {
            let mut free = self.free.borrow_mut();
            let b = free.buffers.get_mut(&key).and_then(Vec::pop);
            if b.is_some() {
                free.bytes -= key.1;
            }
            b
        };
        let buffer = reused.unwrap_or_else(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: key.1,
                usage: kind.usage(),
                mapped_at_creation: false,
            })
        });
        Pooled { buffer: Some(buffer), key, free: self.free.clone() }
    }

    /// Destroy idle buffers, largest first, until at most `max_bytes` are kept. Call right after
    /// a submission: nothing unsubmitted binds an idle buffer then, and work already submitted
    /// may still use one (WebGPU keeps it alive until that work completes).
    /// Returns the bytes destroyed.
    pub fn trim(&self) -> u64 {
        let mut free = self.free.borrow_mut();
        let mut destroyed = 0;
        while free.bytes > self.max_bytes {
            let Some(key) = free.buffers.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| *k).max_by_key(|k| k.1)
            else {
                break;
            };
            if let Some(b) = free.buffers.get_mut(&key).and_then(Vec::pop) {
                b.destroy();
                free.bytes -= key.1;
                destroyed += key.1;
            }
        }
        destroyed
    }

    /// Buffers currently parked in the pool (for tests and metrics).
    pub fn idle_buffers(&self) -> usize {
        self.free.borrow().buffers.values().map(Vec::len).sum()
    }
}
