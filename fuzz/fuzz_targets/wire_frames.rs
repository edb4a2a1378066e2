//! Bytes from a peer's stream into `read_msg`, the one reader of every frame of the
//! inference protocol (`InferRequest`, `ServerMsg`, `ClientMsg`) and the batch protocol
//! (`BatchRequest`, `BatchMsg`): the 4-byte length, the frame limit, the postcard body. The
//! first byte picks the message type; the rest is the stream, read frame after frame until
//! the first error, which must be a typed `WireError` (never a panic, and never an
//! allocation past the frame limit: a frame's body is allocated only once its length is
//! known to be under it).
//!
//! Besides not panicking: each frame read consumes exactly its 4 + length bytes; a message
//! read can be written back (`write_msg`) within the frame limit and reads back equal; and
//! for requests, the stop rules agree with themselves: `stop_reached`, asked after each
//! piece of a text, first says yes after the piece where the text so far first contains a
//! stop sequence, as the provider and the payer both rely on.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use attrinet_p2p::{
    BatchMsg, BatchRequest, ClientMsg, InferRequest, MAX_FRAME_BYTES, Prompt, ServerMsg, WireError, check_stops,
    read_msg, stop_reached, write_msg,
};
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

thread_local! {
    // One runtime for every input: read_msg's timeout needs tokio's timer.
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime"),
    );
}

/// Reads `T` frames from `stream` until the first error; checks each as said above.
fn frames<T>(stream: &[u8], check: impl Fn(&T))
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    RUNTIME.with(|rt| {
        rt.borrow().block_on(async {
            let mut io = Cursor::new(stream);
            loop {
                let at = io.position() as usize;
                match read_msg::<T>(&mut io, Duration::from_secs(60)).await {
                    Ok(msg) => {
                        let len = u32::from_le_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
                        assert!(len <= MAX_FRAME_BYTES);
                        assert_eq!(io.position() as usize, at + 4 + len, "a frame consumes its own bytes only");
                        let mut out = Cursor::new(Vec::new());
                        write_msg(&mut out, &msg).await.expect("what was read within the limit is written within it");
                        let framed = out.into_inner();
                        assert!(framed.len() <= 4 + len, "re-encoding is never longer than what was read");
                        let again: T = read_msg(&mut Cursor::new(&framed[..]), Duration::from_secs(60))
                            .await
                            .expect("a written frame reads back");
                        assert_eq!(again, msg);
                        check(&msg);
                    }
                    Err(WireError::TooLarge(n)) => {
                        assert!(n > MAX_FRAME_BYTES);
                        return;
                    }
                    // The stream ended (or ended inside a frame), or the body is not a T.
                    Err(WireError::Io(_) | WireError::Malformed(_)) => return,
                    Err(e @ WireError::Timeout(_)) => panic!("a stream in memory cannot time out: {e}"),
                }
            }
        })
    });
}

/// The stop rules of a request, over its own prompt cut into pieces of `sizes` bytes.
fn stops_agree(req: &InferRequest, sizes: &[u8]) {
    if check_stops(&req.stop).is_err() {
        return; // the provider refuses it before generating
    }
    let text = match &req.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|m| m.content.as_str()).collect(),
    };
    let _ = req.prompt.max_input_tokens();
    let (mut end, mut sizes) = (0, sizes.iter().cycle());
    while end < text.len() {
        let mut next = (end + usize::from(*sizes.next().unwrap_or(&1)).max(1)).min(text.len());
        while !text.is_char_boundary(next) {
            next += 1;
        }
        let so_far = &text[..next];
        let reached = stop_reached(so_far, next - end, &req.stop);
        let contains = req.stop.iter().any(|s| so_far.contains(s.as_str()));
        assert_eq!(reached, contains, "after {next} bytes of {:?}, stops {:?}", so_far, req.stop);
        if contains {
            return; // generation ends here
        }
        end = next;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 5 {
        0 => {
            // The piece sizes for the stop check come first (up to 8 bytes, by the first).
            let (n, rest) = rest.split_first().map_or((0, rest), |(&n, r)| (usize::from(n % 8).min(r.len()), r));
            let (sizes, stream) = rest.split_at(n);
            frames::<InferRequest>(stream, |req| stops_agree(req, sizes));
        }
        1 => frames::<ServerMsg>(rest, |msg| {
            if let ServerMsg::Propose { weights, .. } = msg {
                let _ = weights.root();
            }
        }),
        2 => frames::<ClientMsg>(rest, |_| {}),
        3 => frames::<BatchRequest>(rest, |_| {}),
        _ => frames::<BatchMsg>(rest, |msg| {
            if let BatchMsg::Weights(weights) = msg {
                for w in weights {
                    let _ = w.root();
                }
            }
        }),
    }
});
