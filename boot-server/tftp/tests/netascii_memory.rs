//! A netascii transfer never holds the file in memory: curl fetches a
//! 64 MiB text file in netascii mode while a counting global allocator (this
//! test binary's only test, so nothing else allocates meanwhile) records the
//! server's peak heap use.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufWriter, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use test_support::Need;
use tokio::process::Command;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every allocation and deallocation is forwarded unchanged to the
// system allocator, which upholds the GlobalAlloc contract; the counters are
// atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract (non-zero size), passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One line of the file, with a bare CR inside, and its netascii form.
const LINE: &[u8] = b"kernel vmlinuz console=ttyS0\rroot=/dev/nbd0 quiet splash ....\n";
const LINE_NA: &[u8] = b"kernel vmlinuz console=ttyS0\r\0root=/dev/nbd0 quiet splash ....\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netascii_64mib_transfer_never_holds_the_file() {
    if !test_support::require(
        "netascii_64mib_transfer_never_holds_the_file",
        &[Need::Tool("curl")],
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let lines = (64 << 20) / LINE.len();
    {
        let f = std::fs::File::create(root.path().join("big.txt")).unwrap();
        let mut w = BufWriter::new(f);
        for _ in 0..lines {
            w.write_all(LINE).unwrap();
        }
        w.flush().unwrap();
    }
    let srv = TestServer::start(root.path(), |_| {}).await;
    let dst = out.path().join("big.txt");
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "300", "--tftp-blksize", "1468", "-o"])
        .arg(&dst)
        .arg(format!("tftp://{}/big.txt;mode=netascii", srv.addr))
        .output()
        .await
        .expect("running curl");
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert!(o.status.success(), "curl: {o:?}");
    // The converted bytes arrived intact.
    let mut got = std::fs::File::open(&dst).unwrap();
    assert_eq!(
        got.metadata().unwrap().len(),
        (lines * LINE_NA.len()) as u64
    );
    let mut buf = vec![0u8; LINE_NA.len() * 1024];
    let mut seen = 0;
    loop {
        let n = got.read(&mut buf[..]).unwrap();
        if n == 0 {
            break;
        }
        let mut filled = n;
        while !filled.is_multiple_of(LINE_NA.len()) {
            let k = got.read(&mut buf[filled..]).unwrap();
            assert!(k > 0, "truncated line");
            filled += k;
        }
        for l in buf[..filled].chunks(LINE_NA.len()) {
            assert_eq!(l, LINE_NA, "line {seen}");
            seen += 1;
        }
    }
    assert_eq!(seen, lines);
    // 64 MiB went through; the server's heap grew by far less.
    assert!(
        peak < 4 << 20,
        "server heap peak {} KiB during a 64 MiB netascii transfer",
        peak >> 10
    );
    eprintln!("heap peak during the transfer: {} KiB", peak >> 10);
}
