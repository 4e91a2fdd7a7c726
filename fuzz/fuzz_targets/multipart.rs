//! Any body, in any chunking, parsed by multer alone and by multer behind the upload route's
//! guard, side by side: no panic; the guard never ends a body multer is still parsing (a
//! guarded parse that succeeds gives exactly multer's parts, and a guarded failure other than
//! the header limit is a failure of multer's too); and the guard refuses a header only where
//! multer held more than the limit of bytes that were not part data.
#![no_main]

use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use vaultfs::handlers::multipart_guard::{multer_error, parser, part_stream, Budget};
use vaultfs::services::upload::UploadError;

type Parts = Vec<(Option<String>, Option<String>, Vec<u8>)>;

fn chunks(body: &[u8], size: usize) -> Vec<Bytes> {
    body.chunks(size.max(1)).map(Bytes::copy_from_slice).collect()
}

async fn alone(body: &[u8], size: usize) -> Result<Parts, ()> {
    let stream =
        futures_util::stream::iter(chunks(body, size).into_iter().map(Ok::<_, std::io::Error>));
    let mut mp = multer::Multipart::new(stream, "B");
    let mut parts = Vec::new();
    while let Some(mut f) = mp.next_field().await.map_err(|_| ())? {
        let (name, file) = (f.name().map(str::to_string), f.file_name().map(str::to_string));
        let mut data = Vec::new();
        while let Some(c) = f.chunk().await.map_err(|_| ())? {
            data.extend_from_slice(&c);
        }
        parts.push((name, file, data));
    }
    Ok(parts)
}

async fn guarded(body: &[u8], size: usize) -> Result<Parts, UploadError> {
    let stream = futures_util::stream::iter(chunks(body, size).into_iter().map(Ok));
    let budget = Budget::default();
    let mut mp = parser(stream, "B".to_string(), budget.clone());
    let mut parts = Vec::new();
    while let Some(f) = mp.next_field().await.map_err(multer_error)? {
        budget.progress();
        let (name, file) = (f.name().map(str::to_string), f.file_name().map(str::to_string));
        let mut data = Vec::new();
        let mut s = std::pin::pin!(part_stream(f, budget.clone()));
        while let Some(c) = s.next().await {
            data.extend_from_slice(&c?);
        }
        parts.push((name, file, data));
    }
    Ok(parts)
}

fuzz_target!(|input: (u16, &[u8])| {
    let (chunk, body) = input;
    let size = usize::from(chunk.max(1));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (a, g) = rt.block_on(async { (alone(body, size).await, guarded(body, size).await) });
    match (a, g) {
        (Ok(a), Ok(g)) => assert_eq!(a, g),
        (Err(()), Err(_)) => {}
        (Ok(a), Err(UploadError::PartHeaderTooLarge(limit))) => {
            let data: usize = a.iter().map(|p| p.2.len()).sum();
            assert!(body.len() - data > limit);
        }
        (a, g) => panic!("multer alone: {a:?}, guarded: {g:?}"),
    }
});
