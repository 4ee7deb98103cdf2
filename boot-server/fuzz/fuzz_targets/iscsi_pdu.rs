#![no_main]
//! Fuzzes the iSCSI parsers: PDUs (with and without CRC32C digests), text key=value
//! segments, CHAP binary values, a whole login conversation (each PDU parsed from the
//! input fed to the login state machine, CHAP-protected or not), and SCSI CDBs with
//! their Data-Out bytes executed against a small overlay. Nothing may panic.
use std::sync::OnceLock;

use boot_iscsi::login::{Chap, ChapSecret, Limits, Login, Lookup};
use boot_iscsi::pdu::{parse_pdu, parse_text, Digests};
use boot_iscsi::scsi::{transfer, Lu};
use libfuzzer_sys::fuzz_target;

fn lu() -> &'static Lu {
    static LU: OnceLock<Lu> = OnceLock::new();
    LU.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("iscsi-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let src = dir.join("base.img");
        std::fs::write(&src, vec![0x5au8; 1 << 20]).expect("base image");
        let store = boot_disk::DiskStore::open(&dir.join("store")).expect("store");
        let _ = store.create_base_from_file("b", &src);
        let _ = store.create_overlay("o", "b");
        let ov = store.open_overlay("o").expect("overlay");
        Lu::new(boot_disk::Disk::Overlay(ov), "fuzz")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: sel & 1 != 0,
        data: sel & 2 != 0,
    };
    let _ = parse_pdu(rest, digests, 1 << 16);
    let _ = parse_text(rest);
    if let Ok(s) = std::str::from_utf8(rest) {
        let _ = boot_iscsi::login::parse_chap_binary(s);
    }
    match sel >> 4 {
        // A login conversation: consecutive PDUs from the input.
        0..=7 => {
            let chap = (sel & 4 != 0).then(|| Chap {
                initiator: ChapSecret {
                    user: "u".into(),
                    secret: "initiatorsecret".into(),
                },
                target: (sel & 8 != 0).then(|| ChapSecret {
                    user: "t".into(),
                    secret: "targetsecret1".into(),
                }),
            });
            let lookup = move |name: &str| {
                if name.starts_with("iqn.") {
                    Lookup::Allowed(chap.clone())
                } else {
                    Lookup::NotFound
                }
            };
            let mut login = Login::new("127.0.0.1".parse().unwrap(), Limits::default());
            let mut buf = rest;
            for _ in 0..8 {
                let Ok((pdu, used)) = parse_pdu(buf, Digests::default(), 1 << 16) else {
                    break;
                };
                buf = &buf[used..];
                match login.step(&pdu, &lookup, &mut || 1) {
                    boot_iscsi::login::Step::Reply(p) => {
                        let _ = p.encode(digests);
                    }
                    _ => break,
                }
            }
        }
        // A SCSI command: a CDB (up to 16 bytes) and its Data-Out.
        _ => {
            let n = rest.len().min(16);
            let (cdb, out) = rest.split_at(n);
            let _ = transfer(cdb);
            let lu = lu();
            let _ = lu.precheck(cdb);
            let _ = lu.execute(u64::from(sel & 1), cdb, out);
        }
    }
});
