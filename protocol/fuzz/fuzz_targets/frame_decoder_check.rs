//! The frame decoder fuzz target's check, shared with the regression test
//! that replays saved inputs (`protocol/tests/fuzz_regressions.rs`): feeds
//! arbitrary bytes, in arbitrary chunks, to the streaming decoder. It must
//! never panic, and once it reports an error the stream is over.

use chat_protocol::FrameDecoder;
use chat_protocol::pb;

/// Panics if the decoder mishandles `data`.
pub fn run(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new(4096);
    for piece in rest.chunks(chunk) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame::<pb::ClientFrame>() {
                Ok(Some(frame)) => {
                    // Whatever decodes re-encodes (canonically, so no
                    // larger than the limit it was accepted under) and
                    // decodes back to itself.
                    let bytes = chat_protocol::codec::encode_to_vec(&frame, 4096)
                        .expect("a decoded frame re-encodes within the limit");
                    let (back, used) =
                        chat_protocol::codec::decode::<pb::ClientFrame>(&bytes, 4096)
                            .expect("re-encoded frame decodes")
                            .expect("re-encoded frame is complete");
                    assert_eq!(used, bytes.len());
                    assert_eq!(back, frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
