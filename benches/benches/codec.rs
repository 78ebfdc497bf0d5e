//! Frame codec throughput: encode and decode of a typical 100-byte text
//! message push, the frame the server writes most often; and what the
//! owner makes of each new message (its stored encoding and its push),
//! encoding the message twice or building the push around the stored bytes.

use chat_protocol::codec::{self, DEFAULT_MAX_FRAME_BYTES};
use chat_protocol::pb::{self, server_frame::Body};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use std::hint::black_box;

fn push_frame() -> pb::ServerFrame {
    pb::ServerFrame {
        request_id: 0,
        body: Some(Body::MessagePush(pb::MessagePush {
            message: Some(pb::Message {
                conversation_id: 42,
                seq: 123_456,
                message_id: 0x0123_4567_89ab_cdef,
                sender_id: 7,
                sent_at_ms: 1_763_800_000_000,
                client_msg_id: "c0ffee00-0000-4000-8000-000000000001".into(),
                kind: pb::MessageKind::User as i32,
                text: "x".repeat(100),
                ..Default::default()
            }),
        })),
    }
}

fn bench(c: &mut Criterion) {
    let frame = push_frame();
    let bytes = codec::encode_to_vec(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap_or_default();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode_message_push", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            buf.clear();
            let _ = codec::encode(black_box(&frame), &mut buf, DEFAULT_MAX_FRAME_BYTES);
        })
    });
    group.bench_function("decode_message_push", |b| {
        b.iter(|| codec::decode::<pb::ServerFrame>(black_box(&bytes), DEFAULT_MAX_FRAME_BYTES))
    });
    group.finish();

    let Some(Body::MessagePush(pb::MessagePush { message: Some(m) })) = push_frame().body else {
        return;
    };
    let mut group = c.benchmark_group("stage_message");
    group.bench_function("encode_twice", |b| {
        b.iter(|| {
            let m = black_box(&m);
            let stored = m.encode_to_vec();
            let push = chatd::reply::push(Body::MessagePush(pb::MessagePush {
                message: Some(m.clone()),
            }));
            (stored, push)
        })
    });
    group.bench_function("push_around_stored", |b| {
        b.iter(|| {
            let stored = black_box(&m).encode_to_vec();
            let push = chatd::reply::message_push(&stored);
            (stored, push)
        })
    });
    group.finish();

    // One SendAck per stored message, built on the owner shard.
    let mut group = c.benchmark_group("send_ack");
    group.bench_function("message_tree", |b| {
        b.iter(|| {
            chatd::reply::answer(
                black_box(41),
                Ok(Body::SendAck(pb::SendAck {
                    conversation_id: black_box(7),
                    seq: 300,
                    message_id: 1 << 40,
                    sent_at_ms: 1_700_000_000_000,
                    client_msg_id: black_box("c-0001234").to_owned(),
                    duplicate: false,
                })),
            )
        })
    });
    group.bench_function("field_by_field", |b| {
        b.iter(|| {
            chatd::reply::send_ack(
                black_box(41),
                chatd::reply::SendAckRef {
                    conversation_id: black_box(7),
                    seq: 300,
                    message_id: 1 << 40,
                    sent_at_ms: 1_700_000_000_000,
                    client_msg_id: black_box("c-0001234"),
                    duplicate: false,
                },
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
