//! The tlog-tiles HTTP side against real Postgres and real sockets: what it
//! serves equals what the ledger crate computes at sizes around tile
//! boundaries, its status codes and headers, and its refusal of malformed
//! paths without falling over. Requests are written by hand on a TCP socket
//! so that malformed paths reach the server exactly as sent.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use tributary_ledger::tiles::{
    TILE_WIDTH, bundles_for_size, decode_entry_bundle, read_tile, tiles_for_size,
};
use tributary_ledger::{Checkpoint, CompactRange, Hash, MemoryStore, leaf_hash};

use crate::support::{TestDb, all_entries, append, log_created, registration};
use crate::tlog_support::{Served, publish_checkpoint, verifier};

/// A response: status, lower-cased headers, body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Sends raw request bytes and reads the whole response (the server closes).
async fn raw(addr: SocketAddr, request: Vec<u8>) -> Reply {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(&request).expect("send");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("receive");
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header block");
        let head = String::from_utf8(bytes[..split].to_vec()).expect("ASCII headers");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: bytes[split + 4..].to_vec(),
        }
    })
    .await
    .expect("client thread")
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let text = format!("{method} {path} HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n");
    raw(addr, text.into_bytes()).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

/// Checks every tile and bundle of the current size against the memory tree.
async fn check_size(addr: SocketAddr, entries: &[Vec<u8>]) {
    let size = entries.len() as u64;
    let mut memory = MemoryStore::new();
    for entry in entries {
        memory.append_entry(entry);
    }

    let reply = get(addr, "/checkpoint").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
    let note = String::from_utf8(reply.body).unwrap();
    let checkpoint = Checkpoint::open(&note, &[verifier()]).unwrap();
    assert_eq!(checkpoint.size, size);

    for tile in tiles_for_size(size) {
        let reply = get(addr, &format!("/{}", tile.path())).await;
        assert_eq!(reply.status, 200, "{} at size {size}", tile.path());
        assert_eq!(reply.header("content-type"), "application/octet-stream");
        assert!(reply.header("cache-control").contains("immutable"));
        assert_eq!(
            reply.body,
            read_tile(&memory, &tile).unwrap(),
            "{} at size {size}",
            tile.path()
        );
        // A higher tile's hashes are the roots of the full tiles below them.
        if tile.level == 1 {
            for (k, hash) in reply.body.chunks(32).enumerate() {
                let mut chunk = CompactRange::new();
                let start = k * TILE_WIDTH as usize;
                for entry in &entries[start..start + TILE_WIDTH as usize] {
                    chunk.append_entry(entry);
                }
                assert_eq!(hash, chunk.root().as_bytes());
            }
        }
    }

    // The leaf hashes of the level-0 tiles reproduce the signed root, and
    // each bundle's entries hash to them.
    let mut from_tiles = CompactRange::new();
    for bundle in bundles_for_size(size) {
        let reply = get(addr, &format!("/{}", bundle.path())).await;
        assert_eq!(reply.status, 200, "{} at size {size}", bundle.path());
        assert!(reply.header("cache-control").contains("immutable"));
        let served = decode_entry_bundle(&reply.body).unwrap();
        let range = bundle.entries();
        assert_eq!(
            served,
            entries[range.start as usize..range.end as usize].to_vec()
        );
        let tile = get(
            addr,
            &format!("/tile/0/{}", &bundle.path()["tile/entries/".len()..]),
        )
        .await;
        assert_eq!(tile.status, 200);
        for (entry, leaf) in served.iter().zip(tile.body.chunks(32)) {
            assert_eq!(leaf_hash(entry).as_bytes(), leaf);
            from_tiles.append_leaf_hash(Hash::from_slice(leaf).unwrap());
        }
    }
    assert_eq!(from_tiles.size(), size);
    assert_eq!(from_tiles.root(), checkpoint.root);
}

#[tokio::test]
async fn tiles_and_bundles_equal_the_ledger_at_sizes_around_tile_boundaries() {
    let db = TestDb::new().await;
    let served = Served::start(db.pool.clone()).await;
    let addr = served.addr;

    // Before anything is signed there is no checkpoint and no tile.
    let reply = get(addr, "/checkpoint").await;
    assert_eq!(reply.status, 404);
    assert!(String::from_utf8_lossy(&reply.body).contains("no checkpoint"));
    assert_eq!(get(addr, "/tile/0/000.p/1").await.status, 404);

    let mut next = 0u32;
    for size in [1u32, 255, 256, 257, 600] {
        while next < size {
            let event = if next == 0 {
                log_created()
            } else {
                registration(next)
            };
            append(&db.pool, event).await;
            next += 1;
        }
        publish_checkpoint(&db.pool).await;
        let entries = all_entries(&db.pool).await;
        check_size(addr, &entries).await;
    }

    // At 600 entries: two full bundles and one of 88; nothing beyond.
    assert_eq!(get(addr, "/tile/entries/002.p/88").await.status, 200);
    for beyond in [
        "/tile/entries/002.p/89",
        "/tile/entries/002",
        "/tile/entries/003.p/1",
        "/tile/0/002",
        "/tile/1/000.p/3",
        "/tile/2/000.p/1",
        "/tile/0/x001/000",
    ] {
        let reply = get(addr, beyond).await;
        assert_eq!(reply.status, 404, "{beyond}");
        assert!(
            String::from_utf8_lossy(&reply.body).contains("beyond the tree"),
            "{beyond}"
        );
    }
    // Partial tiles of earlier checkpoints are still served, and are
    // prefixes of the full tiles.
    let early = get(addr, "/tile/0/000.p/1").await;
    let full = get(addr, "/tile/0/000").await;
    assert_eq!(early.status, 200);
    assert_eq!(early.body, full.body[..32].to_vec());
    let early_bundle = get(addr, "/tile/entries/000.p/255").await;
    assert_eq!(decode_entry_bundle(&early_bundle.body).unwrap().len(), 255);
    // The checkpoint is not cached.
    assert_eq!(
        get(addr, "/checkpoint").await.header("cache-control"),
        "no-cache"
    );

    served.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn malformed_paths_get_400_and_the_server_keeps_serving() {
    let db = TestDb::new().await;
    for n in 0..3u32 {
        append(
            &db.pool,
            if n == 0 {
                log_created()
            } else {
                registration(n)
            },
        )
        .await;
    }
    publish_checkpoint(&db.pool).await;
    let served = Served::start(db.pool.clone()).await;
    let addr = served.addr;
    let good = get(addr, "/tile/0/000.p/3").await;
    assert_eq!(good.status, 200);

    let long = format!("/tile/0/{}", "x001/".repeat(2000) + "000");
    let bad = [
        "/tile/0/1",
        "/tile/0/0000",
        "/tile/01/000",
        "/tile/0/000.p/0",
        "/tile/0/000.p/256",
        "/tile/0/000.p/03",
        "/tile/0/000.p/",
        "/tile/0/000.p/-1",
        "/tile/0/x000/001",
        "/tile/0/001/002",
        "/tile/64/000",
        "/tile/8/000",
        "/tile/-1/000",
        "/tile/entries/00a",
        "/tile/entries/",
        "/tile/entries/000.p/3/",
        "/tile/0/%30%30%30",
        "/tile/0/../0/000",
        "/tile/0/x999999999999999999/000",
        "/tile/",
        long.as_str(),
    ];
    for path in bad {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 400, "{path}");
        let body = String::from_utf8(reply.body.clone()).unwrap();
        assert!(
            body.starts_with("bad request: not a tile path"),
            "{path}: {body}"
        );
        assert!(body.len() < 400, "the error body stays short: {body}");
        assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
    }
    // Unknown paths and methods.
    let reply = get(addr, "/tiles/0/000").await;
    assert_eq!(reply.status, 404);
    assert!(String::from_utf8_lossy(&reply.body).contains("/checkpoint and /tile/"));
    assert_eq!(request(addr, "POST", "/checkpoint").await.status, 405);
    assert_eq!(request(addr, "DELETE", "/tile/0/000.p/3").await.status, 405);
    // HEAD works like GET without a body.
    let head = request(addr, "HEAD", "/tile/0/000.p/3").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // Garbage that is not HTTP is refused by the protocol layer.
    let garbage = raw(addr, b"\x16\x03\x01 not http at all\r\n\r\n".to_vec()).await;
    assert_eq!(garbage.status, 400);

    // After all that, the same resources are served unchanged.
    let again = get(addr, "/tile/0/000.p/3").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, good.body);
    let checkpoint = get(addr, "/checkpoint").await;
    assert_eq!(checkpoint.status, 200);
    Checkpoint::open(&String::from_utf8(checkpoint.body).unwrap(), &[verifier()]).unwrap();
    served.stop().await;
    db.drop_db().await;
}
