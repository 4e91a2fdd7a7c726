//! Any body, in any chunking, through the multipart guard and the parser the upload route
//! uses: no panic, and the guard's bounds hold (no part header over its limit gets through).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultfs::handlers::multipart_guard::{Guard, Verdict, MAX_PART_HEADER_BYTES};

fuzz_target!(|input: (u16, &[u8])| {
    let (chunk, body) = input;
    let chunk = usize::from(chunk.max(1));
    let verdict = Verdict::default();
    let mut guard = Guard::new("B", verdict.clone());
    let mut passed = Vec::new();
    for c in body.chunks(chunk) {
        if guard.feed(c).is_err() {
            break;
        }
        passed.push(bytes::Bytes::copy_from_slice(c));
    }
    let stream = futures_util::stream::iter(passed.into_iter().map(Ok::<_, std::io::Error>));
    let mut multipart = multer::Multipart::new(stream, "B");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        while let Ok(Some(mut field)) = multipart.next_field().await {
            let headers: usize = field.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
            assert!(headers <= MAX_PART_HEADER_BYTES + 64, "{headers}");
            while let Ok(Some(_)) = field.chunk().await {}
        }
    });
});
