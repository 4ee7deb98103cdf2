//! One serving server per overlay (issue 14): two real `boot-server`
//! processes on loopback share one PostgreSQL database. An overlay created
//! through server 1 is held and exported by server 1 only (server 2 refuses
//! its export name, naming server 1 in its log); server 2's boot script for
//! the node points `bootsrv.root=nbd:` at server 1's NBD address; a snapshot
//! asked of server 2 is taken on server 1; a detach through server 2 cuts the
//! node's open connection on server 1 at once. Real peers: `nbdinfo`, a raw
//! NBD client socket, curl. Needs `BOOT_TEST_PG_URL` (qemu-tests/lib/test-postgres.sh
//! start), else skipped (a failure under CI).

mod common;

use common::{
    curl, fresh_database, nbd_open, nbdinfo, random_bytes, wait_for, write_image, Server,
};
use std::time::{Duration, Instant};
use test_support::Need;

const MAC: &str = "52:54:00:00:0e:01";

fn config(url: &str, name: &str) -> String {
    format!(
        "server_ip = \"127.0.0.1\"\n[store]\nurl = \"{url}\"\nserver_name = \"{name}\"\ncontroller_ttl_ms = 3000\n"
    )
}

fn disk_list(s: &Server) -> serde_json::Value {
    serde_json::from_str(&s.cli(&["disk", "list", "--json"])).unwrap()
}

fn server_of(list: &serde_json::Value, name: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["server"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_is_exported_by_its_serving_server_and_booted_from_it() {
    let test = "overlay_server::an_overlay_is_exported_by_its_serving_server_and_booted_from_it";
    if !test_support::require(test, &[Need::Tool("nbdinfo"), Need::Tool("curl")]) {
        return;
    }
    let Some((url, admin, db)) = fresh_database(test, "ovlsrv").await else {
        return;
    };
    let (dir1, cfg1) = Server::prepare(&config(&url, "srv1"));
    write_image(&dir1.path().join("images"), "lab", &[]);
    let base = dir1.path().join("base.raw");
    std::fs::write(&base, random_bytes(2 << 20)).unwrap();
    let s1 = tokio::task::spawn_blocking(move || Server::start_in(dir1, cfg1))
        .await
        .unwrap();
    let s2 = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Server::start(&config(&url, "srv2"))
    })
    .await
    .unwrap();
    let (nbd1, nbd2) = (s1.nbd.clone().unwrap(), s2.nbd.clone().unwrap());
    assert_ne!(nbd1, nbd2);

    tokio::task::spawn_blocking(move || {
        // Through server 1: base, overlay, node, attachment, default image.
        s1.cli(&["default-image", "lab"]);
        s1.cli(&["disk", "add-base", "b", base.to_str().unwrap()]);
        s1.cli(&["disk", "create", "ov1", "--base", "b"]);
        s1.cli(&["node", "add", "--mac", MAC]);
        let out = s1.cli(&["disk", "attach", "ov1", "--node", MAC]);
        let export = out
            .split_whitespace()
            .skip_while(|w| *w != "export")
            .nth(1)
            .unwrap()
            .trim_end_matches(';')
            .to_string();
        assert!(export.starts_with("ov1."), "{out}");
        assert!(s1.path().join("state").exists());

        // Both servers list ov1 as served by srv1.
        assert_eq!(server_of(&disk_list(&s1), "ov1").as_deref(), Some("srv1"));
        assert_eq!(server_of(&disk_list(&s2), "ov1").as_deref(), Some("srv1"));
        let text = s2.cli(&["disk", "list"]);
        assert!(
            text.lines()
                .any(|l| l.contains("ov1") && l.trim_end().ends_with("srv1")),
            "{text}"
        );

        // Server 2 answers the node's boot: its root disk is on server 1.
        let (code, script) = curl(&[&s2.url(&format!("/ipxe/{MAC}"))]);
        assert_eq!(code, 200);
        let script = String::from_utf8(script).unwrap();
        let want = format!("bootsrv.root=nbd:{nbd1}:{export}");
        assert!(
            script.contains(&want),
            "server 2's script does not name server 1's NBD address ({want}):\n{script}"
        );
        // (The fetch bound the node's address, 127.0.0.1, as an enrolled
        // node's first fetch does.)

        // Server 1 exports it to the node's address; server 2 refuses the
        // same name, and says which server serves it.
        assert!(
            wait_for(10, || nbdinfo(&format!("nbd://{nbd1}/{export}"))
                .0
                .then_some(()))
            .is_some(),
            "server 1 never exported ov1 to the node's address; log: {:?}",
            s1.log.lock().unwrap()
        );
        // (Server 2's export table learns of the attachment within a second.)
        let named = wait_for(10, || {
            assert!(
                !nbdinfo(&format!("nbd://{nbd2}/{export}")).0,
                "server 2 exported an overlay server 1 serves"
            );
            s2.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("another server serves this overlay") && l.contains("srv1"))
                .then_some(())
        });
        let log2 = s2.log.lock().unwrap().join("\n");
        assert!(
            named.is_some(),
            "server 2's refusal does not name srv1:\n{log2}"
        );
        assert!(
            !log2.contains(export.rsplit_once('.').unwrap().1),
            "an export secret reached server 2's log"
        );

        // A snapshot asked of server 2 is taken on server 1 (its file is there).
        s2.cli(&["disk", "snapshot", "ov1", "snap1"]);
        assert_eq!(server_of(&disk_list(&s2), "snap1").as_deref(), Some("srv1"));
        let on1 = disk_list(&s1);
        let snap = on1
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "snap1")
            .expect("server 1 lists snap1");
        assert_eq!(snap["kind"], "snapshot");
        assert_eq!(snap["size"], 2 << 20);

        // The node holds ov1 open on server 1; a detach through server 2 cuts it.
        let mut conn = nbd_open(&nbd1, &export);
        let t0 = Instant::now();
        let out = s2.cli(&["disk", "detach", "ov1"]);
        assert!(
            out.contains("(1 open"),
            "detach closed no connection: {out}"
        );
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        use std::io::Read;
        match conn.read(&mut buf) {
            Ok(0) | Err(_) if t0.elapsed() < Duration::from_secs(5) => {}
            other => panic!("server 1 kept the connection open after the detach: {other:?}"),
        }
        assert!(!nbdinfo(&format!("nbd://{nbd1}/{export}")).0);

        // Deleting through server 2 removes the file on server 1.
        s2.cli(&["disk", "delete", "snap1"]);
        assert!(server_of(&disk_list(&s1), "snap1").is_none());
        assert!(server_of(&disk_list(&s2), "snap1").is_none());
        drop(s2);
        drop(s1);
    })
    .await
    .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
}
