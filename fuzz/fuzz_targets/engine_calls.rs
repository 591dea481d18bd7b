//! Random sequences of protobuf requests applied to queue-server's gRPC
//! service over the memory store; counters checked after every call.
#![no_main]

mod replay {
    include!("../replay/engine_calls.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| replay::run(data));
