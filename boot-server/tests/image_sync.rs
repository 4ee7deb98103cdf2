//! Image files across servers (issue 14): two real `boot-server` processes on
//! loopback share one PostgreSQL database; an image added on one (its files
//! only in that server's images directory) is pulled by the other by SHA-256
//! and served with identical bytes; a server whose file no longer matches
//! the table refuses to hand it out and pulls the table's version back.
//! (A source sending other bytes is refused: `imagesync::tests`.) Needs `BOOT_TEST_PG_URL`
//! (qemu-tests/lib/test-postgres.sh start), else skipped (a failure under CI).

mod common;

use common::{curl, fresh_database, wait_for, Server};

fn config(url: &str, name: &str) -> String {
    format!("[store]\nurl = \"{url}\"\nserver_name = \"{name}\"\ncontroller_ttl_ms = 3000\n")
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_added_on_one_server_is_served_by_the_other() {
    let test = "image_sync::an_image_added_on_one_server_is_served_by_the_other";
    let Some((url, admin, db)) = fresh_database(test, "imgsync").await else {
        return;
    };
    // Server A holds the image's files; B's images directory is empty.
    let (dir_a, cfg_a) = Server::prepare(&config(&url, "a"));
    let kernel: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let initrd: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + 5) as u8).collect();
    let lab = dir_a.path().join("images/lab");
    std::fs::create_dir_all(&lab).unwrap();
    std::fs::write(lab.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(lab.join("initrd.img"), &initrd).unwrap();
    std::fs::write(
        lab.join("image.toml"),
        "name = \"lab\"\nkind = \"linux\"\nkernel = \"lab/vmlinuz\"\ninitrd = \"lab/initrd.img\"\n",
    )
    .unwrap();
    let a = tokio::task::spawn_blocking(move || Server::start_in(dir_a, cfg_a))
        .await
        .unwrap();
    let b = tokio::task::spawn_blocking(move || Server::start(&config(&url, "b")))
        .await
        .unwrap();

    // B pulls both files (within a few sync rounds) and serves identical bytes,
    // by path (what nodes fetch) and by digest (what servers pull).
    let got = tokio::task::spawn_blocking({
        let u = b.url("/images/lab/vmlinuz");
        move || {
            wait_for(30, || match curl(&[&u]) {
                (200, body) => Some(body),
                _ => None,
            })
        }
    })
    .await
    .unwrap();
    let got = got.unwrap_or_else(|| {
        panic!(
            "B never served lab/vmlinuz; B's log: {:?}",
            b.log.lock().unwrap()
        )
    });
    assert!(got == kernel, "B served other bytes than A's kernel");
    let (code, body) = curl(&[&b.url(&format!("/files/sha256/{}", sha256_hex(&initrd)))]);
    assert_eq!(code, 200);
    assert!(body == initrd, "B's initrd by digest differs from A's");
    assert_eq!(
        std::fs::read(b.path().join("images/lab/initrd.img")).unwrap(),
        initrd,
        "B stored the initrd under the table's path"
    );
    assert!(
        b.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("image file pulled and verified")),
        "B logs the verified pull"
    );

    // A file changed on a server after it was added is never handed out (by
    // digest to servers, or by path to nodes: 409) and never spreads; that
    // server then pulls the table's version back from the other one.
    std::fs::write(a.path().join("images/lab/vmlinuz"), b"tampered").unwrap();
    for path in [
        format!("/files/sha256/{}", sha256_hex(&kernel)),
        "/images/lab/vmlinuz".to_string(),
    ] {
        let (code, body) = curl(&[&a.url(&path)]);
        assert!(
            code == 409 || (code == 200 && body == kernel),
            "A answered {code} with {} bytes for {path}",
            body.len()
        );
    }
    let (code, body) = curl(&[&b.url("/images/lab/vmlinuz")]);
    assert_eq!(code, 200);
    assert!(body == kernel, "the tampered copy reached B");
    let healed = tokio::task::spawn_blocking({
        let u = a.url("/images/lab/vmlinuz");
        let k = kernel.clone();
        move || wait_for(30, || (curl(&[&u]) == (200, k.clone())).then_some(()))
    })
    .await
    .unwrap();
    assert!(
        healed.is_some(),
        "A never got the table's kernel back; A's log: {:?}",
        a.log.lock().unwrap()
    );
    drop((a, b));
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
}
