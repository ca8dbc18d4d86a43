//! Arbitrary bytes as a Kinesis record: decoding and the whole engine must
//! return a typed error or a result, never panic, and never inflate past the
//! cap. Inputs starting with the gzip magic reach libdeflate; others reach
//! the JSON decoder directly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sshwarden_pipeline::envelope::Decoder;
use sshwarden_pipeline::{Engine, EngineConfig, RecordInput};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(1 << 20);
    if let Ok(envelope) = decoder.decode(data) {
        for event in &envelope.log_events {
            assert!(event.message.len() <= 1 << 20);
        }
    }
    let mut engine = match Engine::new(EngineConfig {
        max_decompressed: 1 << 20,
        ..EngineConfig::default()
    }) {
        Ok(e) => e,
        Err(e) => panic!("default config rejected: {e}"),
    };
    let mut out = Vec::new();
    let record = RecordInput {
        data,
        position: 1,
        arrival_ms: Some(1_700_000_000_000),
        ..RecordInput::default()
    };
    let _ = engine.process_record(&record, &mut out);
    engine.finish();
});
