//! Admission and resource limits: connections per client address and in total, worker
//! threads across connections, and the large-buffer budget (big writes still complete
//! when the budget is smaller than one request).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boot_nbd::{AllowAllResolver, DiskStore, NbdLimits};
use common::*;

fn store(dir: &std::path::Path) -> Arc<DiskStore> {
    let src = dir.join("src.img");
    random_file(&src, 16 * 1024 * 1024);
    let store = Arc::new(DiskStore::open(&dir.join("store")).unwrap());
    store.create_base_from_file("deb", &src).unwrap();
    store.create_overlay("node", "deb").unwrap();
    store
}

/// True if the server greets a new TCP connection (admitted), false if it closes it.
fn admitted(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).is_ok()
}

fn nbd_worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim() == "nbd-worker")
                .unwrap_or(false)
        })
        .count()
}

fn await_true(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// One test function: it counts the process's worker threads.
#[test]
fn connection_thread_and_buffer_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());

    // Per client address.
    let limits = NbdLimits {
        max_connections_per_ip: 2,
        workers_per_connection: 8,
        max_worker_threads: 4,
        ..NbdLimits::default()
    };
    let (addr, h) = start_server_with(st.clone(), Arc::new(AllowAllResolver(st.clone())), limits);
    let c1 = Client::connect(addr, "node").unwrap();
    let mut c2 = Client::connect(addr, "node").unwrap();
    assert!(
        !admitted(addr),
        "third connection from one address admitted"
    );
    // Worker threads: 4 for the first connection, the budget is spent, 1 for the second.
    await_true("worker threads not started", || nbd_worker_threads() == 5);
    assert_eq!(h.connections(), 2);
    c2.write(0, &[9u8; 100]);
    drop(c1);
    await_true("closed connection not released", || h.connections() == 1);
    assert!(
        admitted(addr),
        "a slot freed by a closed connection is reusable"
    );
    drop(c2);

    // In total.
    let limits = NbdLimits {
        max_connections: 1,
        ..NbdLimits::default()
    };
    let (addr, _h) = start_server_with(st.clone(), Arc::new(AllowAllResolver(st.clone())), limits);
    let c = Client::connect(addr, "node").unwrap();
    assert!(
        !admitted(addr),
        "second connection admitted over max_connections=1"
    );
    drop(c);

    // A 1 MiB buffer budget still serves 4 MiB writes from two connections at once.
    let limits = NbdLimits {
        max_buffer_bytes: 1024 * 1024,
        ..NbdLimits::default()
    };
    let (addr, _h) = start_server_with(st.clone(), Arc::new(AllowAllResolver(st)), limits);
    let writers: Vec<_> = (0..2u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, "node").unwrap();
                let data = vec![i + 1; 4 * 1024 * 1024];
                let cookies: Vec<u64> = (0..4u64)
                    .map(|k| {
                        c.send(
                            CMD_WRITE,
                            0,
                            (u64::from(i) * 4 + k) * (1 << 20),
                            1 << 20,
                            &data[..1 << 20],
                        )
                    })
                    .collect();
                for _ in &cookies {
                    assert_eq!(c.recv().1, 0);
                }
                c.write(u64::from(i) * 4 * (1 << 20), &data);
                c.flush();
                assert!(c.read(u64::from(i) * 4 * (1 << 20), 1 << 20) == data[..1 << 20]);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}
