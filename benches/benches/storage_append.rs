//! Appending messages through the storage writer with group commit and
//! fsync (`Durability::Sync`, the default): one commit of 1, 64 or 1024
//! messages, each a message record plus its idempotency key, as the owner
//! shard writes them. Throughput is in messages.

use chatd::Durability;
use chatd::storage::writer::{Batch, Writer};
use chatd::storage::{Ks, Store, keys};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store"), &dir.path().join("log")).expect("store");
    let (writer, thread) = Writer::start(store, Durability::Sync, 16_384).expect("writer");
    let value = vec![b'x'; 160];
    let mut seq = 0u64;
    let mut group = c.benchmark_group("storage_append_fsync");
    group.sample_size(20);
    for size in [1u64, 64, 1024] {
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("batch_{size}"), |b| {
            b.iter_batched(
                || {
                    let mut batch = Batch::new();
                    for _ in 0..size {
                        seq += 1;
                        batch.put(Ks::Messages, keys::message(42, seq), &value);
                        batch.put(
                            Ks::Idempotency,
                            keys::idempotency(42, 7, &format!("k{seq}")),
                            vec![0u8; 24],
                        );
                    }
                    batch
                },
                |batch| writer.write_blocking(batch).expect("commit"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    drop(writer);
    thread.join();
}

criterion_group!(benches, bench);
criterion_main!(benches);
