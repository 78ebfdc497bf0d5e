//! Feeds arbitrary bytes, in arbitrary chunks, to the streaming decoder. It
//! must never panic, and once it reports an error the stream is over.
#![no_main]

use chat_protocol::pb;
use chat_protocol::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
                    // Whatever decodes must re-encode within the limit it
                    // was accepted under.
                    let _ = chat_protocol::codec::encode_to_vec(&frame, 8192);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
