//! The owner shard's per-conversation sequencer: admitting a new send
//! (dense seq, message id, idempotency key remembered) and answering a
//! retried one from memory.

use chatd::idgen::MessageIdGenerator;
use chatd::sequencer::{Admission, Sequencer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequencer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("assign_new", |b| {
        // The default memory: 16 keys per `recent_messages` (256).
        let mut seq = Sequencer::new(0, 4096);
        let mut ids = MessageIdGenerator::new(1);
        let keys: Vec<String> = (0..65_536)
            .map(|i| format!("c0ffee00-0000-4000-8000-{i:012}"))
            .collect();
        let mut i = 0usize;
        b.iter(|| {
            let key = &keys[i % keys.len()];
            i += 1;
            // A fresh sender per lap keeps every key new.
            let sender = 7 + (i / keys.len()) as u64;
            black_box(seq.assign(sender, Some(key), 1_763_800_000_000, &mut ids))
        })
    });
    group.bench_function("assign_duplicate", |b| {
        let mut seq = Sequencer::new(0, 4096);
        let mut ids = MessageIdGenerator::new(1);
        let key = "c0ffee00-0000-4000-8000-000000000001";
        let first = seq.assign(7, Some(key), 1_763_800_000_000, &mut ids);
        assert!(matches!(first, Admission::New(_)));
        b.iter(|| black_box(seq.assign(7, Some(black_box(key)), 1_763_800_000_001, &mut ids)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
