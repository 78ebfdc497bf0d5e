//! Live fan-out on a shard: queueing one encoded push to the sessions of
//! the 500 members of a group (`SessionTable::deliver`), the work a shard
//! does per message and group. The frame is shared, not copied.

use bytes::Bytes;
use chatd::session_table::SessionTable;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const MEMBERS: u64 = 500;

fn bench(c: &mut Criterion) {
    let mut table = SessionTable::new(0, std::sync::Arc::new(chatd::directory::Directory::new(1)));
    let mut queues = Vec::new();
    for user in 1..=MEMBERS {
        let (id, _handle, rx) = table.insert(1024, 4 << 20, 256, 4);
        table.authenticate(id, user);
        queues.push(rx);
    }
    let users: Vec<u64> = (1..=MEMBERS).collect();
    let frame = Bytes::from(vec![0u8; 180]);
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(MEMBERS));
    group.bench_function("deliver_to_500_sessions", |b| {
        b.iter(|| {
            let n = table.deliver(black_box(&users), &frame, false);
            // The connections' writers take the frames off the queues.
            for q in &queues {
                while let Some(f) = q.try_recv() {
                    q.taken(f.frame.len());
                }
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
