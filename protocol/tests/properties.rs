//! Property tests of the codec: round trips, arbitrary input never panics,
//! and splitting a stream anywhere yields the same frames.

use chat_protocol::codec::{self, FrameDecoder, FrameError};
use chat_protocol::pb::{self, client_frame::Body as C};
use proptest::prelude::*;

const MAX: usize = chat_protocol::DEFAULT_MAX_FRAME_BYTES;

fn arb_frame() -> impl Strategy<Value = pb::ClientFrame> {
    let body = prop_oneof![
        any::<u64>().prop_map(|nonce| C::Ping(pb::Ping { nonce })),
        (
            any::<u64>(),
            ".{0,40}",
            ".{0,200}",
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(conversation_id, client_msg_id, text, ct)| {
                C::SendMessage(pb::SendMessage {
                    conversation_id,
                    client_msg_id,
                    text,
                    ciphertext: ct.into(),
                    ..Default::default()
                })
            }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(c, b, a, l)| {
            C::GetHistory(pb::GetHistory {
                conversation_id: c,
                before_seq: b,
                after_seq: Some(a),
                limit: l,
            })
        }),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20).prop_map(|cs| {
            C::Sync(pb::Sync {
                cursors: cs
                    .into_iter()
                    .map(|(conversation_id, seq)| pb::Cursor {
                        conversation_id,
                        seq,
                    })
                    .collect(),
                limit_per_conversation: 0,
            })
        }),
    ];
    (any::<u64>(), proptest::option::of(body))
        .prop_map(|(request_id, body)| pb::ClientFrame { request_id, body })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(frame in arb_frame()) {
        let bytes = codec::encode_to_vec(&frame, MAX).expect("small frame");
        let (back, used) = codec::decode::<pb::ClientFrame>(&bytes, MAX)
            .expect("valid")
            .expect("complete");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn split_anywhere_streaming_decode_gives_the_same_frames(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            codec::encode(f, &mut stream, MAX).expect("small frame");
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::new(MAX);
        let mut out = Vec::new();
        for pair in points.windows(2) {
            decoder.extend(&stream[pair[0]..pair[1]]);
            while let Some(f) = decoder.next_frame::<pb::ClientFrame>().expect("valid stream") {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<pb::ClientFrame>(&bytes, MAX);
        let _ = codec::decode::<pb::ServerFrame>(&bytes, 64);
    }
}

/// 10,000 random byte strings: each decodes to a frame, asks for more bytes,
/// or returns a typed error; none panics.
#[test]
fn ten_thousand_random_strings_return_typed_results() {
    // A fixed-seed xorshift keeps the run reproducible without a dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut frames, mut incomplete, mut errors) = (0, 0, 0);
    for _ in 0..10_000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match codec::decode::<pb::ClientFrame>(&bytes, 4096) {
            Ok(Some(_)) => frames += 1,
            Ok(None) => incomplete += 1,
            Err(
                FrameError::TooLarge { .. } | FrameError::InvalidVarint | FrameError::Malformed(_),
            ) => errors += 1,
            Err(e) => panic!("untyped error {e}"),
        }
    }
    assert_eq!(frames + incomplete + errors, 10_000);
    assert!(errors > 0 && incomplete > 0);
}

#[test]
fn oversized_frames_are_refused_before_the_body_arrives() {
    let mut prefix = Vec::new();
    prost::encoding::encode_varint(2_000_000, &mut prefix);
    assert!(matches!(
        codec::check(&prefix, MAX),
        Err(FrameError::TooLarge { len: 2_000_000, .. })
    ));
    // Even the first byte of a long prefix can already prove it too large.
    assert!(matches!(
        codec::check(&[0xff, 0xff], 100),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn encoder_refuses_frames_over_the_limit() {
    let frame = pb::ClientFrame {
        request_id: 1,
        body: Some(C::SendMessage(pb::SendMessage {
            text: "x".repeat(200),
            ..Default::default()
        })),
    };
    let mut out = Vec::new();
    assert!(matches!(
        codec::encode(&frame, &mut out, 100),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(out.is_empty());
}
