#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto_fuzz::{checks, counting};

// Counts allocations, for the bound checks::alloc_bound asserts.
#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

fuzz_target!(|data: &[u8]| checks::pre_auth(data));
