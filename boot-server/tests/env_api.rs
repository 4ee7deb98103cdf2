//! The engine's admin surface against a real `boot-server serve` on
//! loopback (no guests: no node boots, only the admin API moves): the CLI
//! creates an environment with hooks from files, requirements, schedules and
//! addresses; lists and shows it (JSON and tables); changes it (maps merged,
//! schedules replaced); scales it inside and outside min..max; sets and
//! clears its policy; puts enrolled nodes into an environment and refuses a
//! node that is not idle; deletes it. The REST errors keep the API's one
//! shape (`{"code", "message"}`) with 400/401/404/409, and the CLI's exit
//! codes follow them (1 error, 2 usage, 3 not found).

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Command, Output};
use test_support::Need;

fn run(s: &Server, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--config")
        .arg(&s.config)
        .args(args)
        .output()
        .unwrap()
}

/// Runs a CLI command that must succeed; its stdout.
fn ok(s: &Server, args: &[&str]) -> String {
    let out = run(s, args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a CLI command that must fail with `code`; its stderr.
fn fails(s: &Server, code: i32, args: &[&str]) -> String {
    let out = run(s, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: stdout {} stderr {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

fn json_of(s: &Server, args: &[&str]) -> Value {
    let out = ok(s, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// An admin API call with the token: (status, JSON body or null).
fn api(s: &Server, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {token}");
    let url = s.url(path);
    let mut args = vec!["-X", method, "-H", &auth, &url];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let (code, bytes) = curl(&args);
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Asserts the API's error shape: `status` and `{"code": code, "message": non-empty}`.
fn api_error(got: (u16, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    let m = got.1["message"].as_str().unwrap_or("").to_string();
    assert!(!m.is_empty(), "{}", got.1);
    m
}

#[test]
fn environments_slots_and_policies_through_cli_and_rest() {
    if !test_support::require(
        "environments_slots_and_policies_through_cli_and_rest",
        &[Need::Tool("curl")],
    ) {
        return;
    }
    let (dir, config) = Server::prepare("");
    write_image(&dir.path().join("images"), "lab", &[]);
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let start_text = "#!/bin/sh\nexec /usr/bin/app --port 80\n";
    let health_text = "#!/bin/sh\necho load=0.5\n";
    std::fs::write(hooks.join("start"), start_text).unwrap();
    std::fs::write(hooks.join("health"), health_text).unwrap();
    let s = Server::start_in(dir, config);
    let token = s.admin_token();
    let start = format!("start={}", hooks.join("start").display());
    let health = format!("health={}", hooks.join("health").display());

    // Create: every option lands in the stored environment.
    let out = ok(
        &s,
        &[
            "env",
            "create",
            "web",
            "--image",
            "lab",
            "--description",
            "front end",
            "--min",
            "1",
            "--nodes",
            "2",
            "--max",
            "4",
            "--priority",
            "5",
            "--share",
            "40",
            "--hostname-pattern",
            "web-{slot}",
            "--addresses",
            "127.0.9.10-127.0.9.13",
            "--require",
            "firmware=bios",
            "--require",
            "cpus=2",
            "--require",
            "memory-mib=512",
            "--require",
            "label:rack=r1",
            "--hook",
            &start,
            "--hook",
            &health,
            "--config",
            "role=web",
            "--schedule",
            "0 0 8 * * *=>scale:3",
            "--schedule",
            "0 0 20 * * 1-5=>deactivate",
            "--boot",
            "cold",
            "--version",
            "1.2",
        ],
    );
    assert!(out.contains("created environment web"), "{out}");
    let list = json_of(&s, &["env", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["slots"], json!([]));
    let e = json_of(&s, &["env", "show", "web", "--json"]);
    assert_eq!(e["description"], "front end");
    assert_eq!(e["image"], "lab");
    assert_eq!(
        (&e["min"], &e["desired"], &e["max"], &e["target"]),
        (&json!(1), &json!(2), &json!(4), &json!(2))
    );
    assert_eq!(e["priority"], 5);
    assert_eq!(e["share_pct"], 40);
    assert_eq!(e["hostname_pattern"], "web-{slot}");
    assert_eq!(e["addresses"], "127.0.9.10-127.0.9.13");
    assert_eq!(
        e["requirements"],
        json!({"firmware": "bios", "min_cpus": 2, "min_memory_mib": 512, "labels": {"rack": "r1"}})
    );
    assert_eq!(
        e["hooks"],
        json!({"start": start_text, "health": health_text})
    );
    assert_eq!(e["config"], json!({"role": "web"}));
    assert_eq!(
        e["schedules"],
        json!([
            {"cron": "0 0 8 * * *", "action": {"scale": 3}},
            {"cron": "0 0 20 * * 1-5", "action": "deactivate"}
        ])
    );
    assert_eq!(e["boot"], "cold");
    assert_eq!(e["version"], "1.2");
    assert_eq!(e["active"], true);
    assert_eq!(e["preemptible"], true);
    let table = ok(&s, &["env", "show", "web"]);
    for want in [
        "web-{slot}",
        "127.0.9.10-127.0.9.13",
        &format!("start ({} bytes)", start_text.len()),
        "firmware=bios cpus>=2 memory>=512MiB label:rack=r1",
        "0 0 8 * * *=>scale:3",
        "holding 0, target 2 (min 1, desired 2, max 4)",
    ] {
        assert!(table.contains(want), "{want:?} not in\n{table}");
    }
    let listed = ok(&s, &["env", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("lab")),
        "{listed}"
    );

    // Set: only what is given changes; maps merge, schedules are replaced.
    ok(
        &s,
        &[
            "env",
            "set",
            "web",
            "--config",
            "tier=1",
            "--require",
            "label:zone=a",
            "--description",
            "new text",
            "--preemptible=false",
        ],
    );
    let e = json_of(&s, &["env", "show", "web", "--json"]);
    assert_eq!(e["config"], json!({"role": "web", "tier": "1"}));
    assert_eq!(
        e["requirements"]["labels"],
        json!({"rack": "r1", "zone": "a"})
    );
    assert_eq!(e["requirements"]["min_cpus"], 2);
    assert_eq!(e["description"], "new text");
    assert_eq!(e["preemptible"], false);
    assert_eq!(e["schedules"].as_array().map(Vec::len), Some(2));
    assert_eq!(e["hooks"]["start"], start_text, "hooks untouched");
    ok(
        &s,
        &[
            "env",
            "set",
            "web",
            "--schedule",
            "0 30 9 * * *=>activate",
            "--unset-config",
            "role",
            "--unset-hook",
            "health",
            "--share",
            "none",
        ],
    );
    let e = json_of(&s, &["env", "show", "web", "--json"]);
    assert_eq!(
        e["schedules"],
        json!([{"cron": "0 30 9 * * *", "action": "activate"}])
    );
    assert_eq!(e["config"], json!({"tier": "1"}));
    assert_eq!(e["hooks"], json!({"start": start_text}));
    assert_eq!(e["share_pct"], Value::Null);
    ok(&s, &["env", "set", "web", "--clear-schedules"]);
    assert_eq!(
        json_of(&s, &["env", "show", "web", "--json"])["schedules"],
        json!([])
    );
    let err = fails(&s, 2, &["env", "set", "web"]);
    assert!(err.contains("nothing to change"), "{err}");
    // The server checks what only it can: a max the address range cannot serve.
    let err = fails(&s, 1, &["env", "set", "web", "--max", "5"]);
    assert!(err.contains("4 addresses for up to 5 slots"), "{err}");

    // Malformed options are usage errors (exit 2) that say what to write.
    for (args, says) in [
        (vec!["--require", "gpu=1"], "label:KEY=VALUE"),
        (vec!["--require", "cpus=two"], "whole number"),
        (vec!["--config", "novalue"], "KEY=VALUE"),
        (vec!["--schedule", "0 0 8 * * *"], "CRON=>activate"),
        (vec!["--schedule", "0 0 8 * * *=>scale:x"], "CRON=>scale:N"),
        (vec!["--schedule", "never=>activate"], "sec min hour"),
        (vec!["--hook", "boot=/dev/null"], "not a hook"),
        (
            vec!["--hook", "start=/nonexistent/hook"],
            "reading /nonexistent/hook",
        ),
        (
            vec!["--addresses", "127.0.9.13-127.0.9.10"],
            "above the last",
        ),
        (vec!["--boot", "lukewarm"], "warm"),
    ] {
        let mut cmd = vec!["env", "create", "bad", "--image", "lab"];
        cmd.extend(args.iter().copied());
        let err = fails(&s, 2, &cmd);
        assert!(err.contains(says), "{args:?}: {says:?} not in {err}");
    }
    assert!(fails(
        &s,
        2,
        &[
            "node",
            "add",
            "--mac",
            "52:54:00:00:0e:09",
            "--label",
            "rack"
        ]
    )
    .contains("KEY=VALUE"));
    // A server-side refusal is exit 1; nothing was created.
    let err = fails(&s, 1, &["env", "create", "bad", "--image", "no-such-image"]);
    assert!(err.contains("no-such-image"), "{err}");
    fails(&s, 3, &["env", "show", "bad"]);

    // Scale: within min..max, else refused with the bounds.
    ok(&s, &["env", "scale", "web", "3"]);
    assert_eq!(json_of(&s, &["env", "show", "web", "--json"])["desired"], 3);
    for n in ["5", "0"] {
        let err = fails(&s, 1, &["env", "scale", "web", n]);
        assert!(err.contains("1..=4"), "{err}");
    }
    assert_eq!(json_of(&s, &["env", "show", "web", "--json"])["desired"], 3);
    fails(&s, 3, &["env", "scale", "nope", "1"]);

    // Activate / deactivate.
    ok(&s, &["env", "deactivate", "web"]);
    let e = json_of(&s, &["env", "show", "web", "--json"]);
    assert_eq!((&e["active"], &e["target"]), (&json!(false), &json!(0)));
    ok(&s, &["env", "activate", "web"]);
    assert_eq!(
        json_of(&s, &["env", "show", "web", "--json"])["active"],
        true
    );

    // Policy.
    let out = ok(
        &s,
        &[
            "policy",
            "set",
            "web",
            "--add-above",
            "0.8",
            "--remove-below",
            "0.2",
            "--window",
            "30",
            "--metric",
            "rps",
        ],
    );
    assert!(out.contains("rps above 0.8"), "{out}");
    assert_eq!(
        json_of(&s, &["env", "show", "web", "--json"])["policy"],
        json!({"metric": "rps", "add_above": 0.8, "remove_below": 0.2, "window_secs": 30})
    );
    let err = fails(
        &s,
        1,
        &[
            "policy",
            "set",
            "web",
            "--add-above",
            "0.1",
            "--remove-below",
            "0.2",
            "--window",
            "30",
        ],
    );
    assert!(err.contains("must be under"), "{err}");
    ok(&s, &["policy", "clear", "web"]);
    assert_eq!(
        json_of(&s, &["env", "show", "web", "--json"])["policy"],
        Value::Null
    );

    // Nodes: an enrolled node is idle; it goes into an environment whose
    // requirements it meets; a node that is not idle is refused (409).
    ok(
        &s,
        &[
            "node",
            "add",
            "--mac",
            "52:54:00:00:0e:01",
            "--label",
            "rack=r1",
        ],
    );
    ok(&s, &["node", "add", "--mac", "52:54:00:00:0e:02"]);
    let err = fails(&s, 1, &["env", "add-node", "web", "52:54:00:00:0e:01"]);
    assert!(err.contains("requirements"), "{err}");
    ok(
        &s,
        &[
            "env", "create", "pool", "--image", "lab", "--max", "2", "--nodes", "0",
        ],
    );
    let out = ok(&s, &["env", "add-node", "pool", "52:54:00:00:0e:01"]);
    assert!(
        out.contains("node-525400000e01") && out.contains("slot 0 of pool"),
        "{out}"
    );
    let slots = json_of(&s, &["slot", "list", "pool", "--json"]);
    assert_eq!(slots.as_array().map(Vec::len), Some(1), "{slots}");
    assert_eq!(slots[0]["node"], "node-525400000e01");
    assert_eq!(slots[0]["hostname"], "pool-0");
    // The engine is moving the node meanwhile (it never boots here): compare
    // what stays, the slot and its holder.
    let key = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|sl| {
                (
                    sl["environment"].clone(),
                    sl["index"].clone(),
                    sl["node"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&json_of(&s, &["slot", "list", "--json"])), key(&slots));
    let table = ok(&s, &["slot", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("pool ") && l.contains("node-525400000e01")),
        "{table}"
    );
    let nodes = json_of(&s, &["node", "list", "--json"]);
    let held = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["mac"] == "52:54:00:00:0e:01")
        .unwrap();
    assert_eq!(
        (&held["environment"], &held["slot"]),
        (&json!("pool"), &json!(0))
    );
    let table = ok(&s, &["node", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-525400000e01") && l.contains("pool/0")),
        "{table}"
    );
    let shown = ok(&s, &["node", "show", "52:54:00:00:0e:01"]);
    assert!(
        shown.contains("pool/0") && shown.contains("rack=r1"),
        "{shown}"
    );
    assert_eq!(
        json_of(&s, &["node", "show", "52:54:00:00:0e:01", "--json"])["environment"],
        "pool"
    );
    let err = fails(&s, 1, &["env", "add-node", "pool", "52:54:00:00:0e:01"]);
    assert!(err.contains("already serves pool"), "{err}");
    ok(&s, &["node", "quarantine", "52:54:00:00:0e:02"]);
    let err = fails(&s, 1, &["env", "add-node", "pool", "52:54:00:00:0e:02"]);
    assert!(err.contains("only idle pool nodes"), "{err}");
    api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments/pool/add-node",
            Some(r#"{"node": "52:54:00:00:0e:02"}"#),
        ),
        409,
        "conflict",
    );
    fails(&s, 3, &["env", "add-node", "pool", "52:54:00:00:0e:77"]);
    // An environment holding a node is not deleted.
    let err = fails(&s, 1, &["env", "delete", "pool"]);
    assert!(err.contains("still holds 1 node"), "{err}");
    api_error(
        api(&s, &token, "DELETE", "/api/environments/pool", None),
        409,
        "conflict",
    );

    // REST: the one error shape, for every kind of mistake.
    api_error(
        api(&s, &token, "GET", "/api/environments/nope", None),
        404,
        "not_found",
    );
    api_error(
        api(&s, &token, "GET", "/api/slots?environment=nope", None),
        404,
        "not_found",
    );
    api_error(
        api(&s, &token, "POST", "/api/environments", Some("{not json")),
        400,
        "bad_request",
    );
    let m = api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments",
            Some(r#"{"name": "x", "image": "lab", "desried": 2}"#),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("desried"), "{m}");
    let m = api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments",
            Some(r#"{"image": "lab"}"#),
        ),
        400,
        "bad_request",
    );
    assert!(m.contains("name"), "{m}");
    api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments",
            Some(r#"{"name": "web", "image": "lab"}"#),
        ),
        409,
        "conflict",
    );
    api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments",
            Some(r#"{"name": "Bad Name", "image": "lab"}"#),
        ),
        400,
        "bad_request",
    );
    api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments/web/scale",
            Some(r#"{"nodes": 99}"#),
        ),
        400,
        "bad_request",
    );
    api_error(
        api(
            &s,
            &token,
            "POST",
            "/api/environments/web/scale",
            Some(r#"{"nodes": "two"}"#),
        ),
        400,
        "bad_request",
    );
    api_error(
        api(
            &s,
            &token,
            "PATCH",
            "/api/environments/web",
            Some(r#"{"min": 9}"#),
        ),
        400,
        "bad_request",
    );
    api_error(
        api(&s, &token, "PATCH", "/api/environments/web", Some("[1]")),
        400,
        "bad_request",
    );
    api_error(
        api(
            &s,
            &token,
            "PUT",
            "/api/environments/web/policy",
            Some(r#"{"add_above": 1}"#),
        ),
        400,
        "bad_request",
    );
    api_error(
        api(
            &s,
            &token,
            "GET",
            "/api/environments/web/history?since_ms=yesterday",
            None,
        ),
        400,
        "bad_request",
    );
    api_error(
        api(
            &s,
            "0123456789abcdef0123456789abcdef",
            "GET",
            "/api/environments",
            None,
        ),
        401,
        "unauthorized",
    );
    // REST successes: PATCH answers the merged environment; the policy is PUT and cleared with null.
    let (code, v) = api(
        &s,
        &token,
        "PATCH",
        "/api/environments/web",
        Some(r#"{"priority": 7}"#),
    );
    assert_eq!(
        (code, &v["priority"], &v["desired"]),
        (200, &json!(7), &json!(3))
    );
    let (code, v) = api(
        &s,
        &token,
        "PUT",
        "/api/environments/web/policy",
        Some(r#"{"add_above": 2, "remove_below": 1, "window_secs": 5}"#),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["policy"]["metric"], "load");
    let (code, v) = api(
        &s,
        &token,
        "PUT",
        "/api/environments/web/policy",
        Some("null"),
    );
    assert_eq!((code, &v["policy"]), (200, &Value::Null));
    let (code, v) = api(
        &s,
        &token,
        "POST",
        "/api/environments",
        Some(r#"{"name": "tiny", "image": "lab", "active": false}"#),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!((&v["max"], &v["active"]), (&json!(16), &json!(false)));

    // History: the decisions about pool (the admin's add-node) are there.
    let h = json_of(&s, &["env", "history", "pool", "--json"]);
    assert!(h["load"].is_array(), "{h}");
    let decisions = h["decisions"].as_array().unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d["kind"] == "engine-decision" && d["detail"]["reason"] == "admin add-node"),
        "{h}"
    );
    let table = ok(&s, &["env", "history", "pool"]);
    assert!(
        table.contains("decisions:") && table.contains("admin add-node"),
        "{table}"
    );
    let later = json_of(
        &s,
        &[
            "env",
            "history",
            "pool",
            "--since-ms",
            "99999999999999",
            "--json",
        ],
    );
    assert_eq!(later["decisions"], json!([]));
    fails(&s, 3, &["env", "history", "nope"]);

    // Delete: an environment without nodes goes; then it is not found.
    ok(&s, &["env", "delete", "web"]);
    ok(&s, &["env", "delete", "tiny"]);
    fails(&s, 3, &["env", "show", "web"]);
    fails(&s, 3, &["env", "delete", "web"]);
    let names: Vec<Value> = json_of(&s, &["env", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("pool")]);
}
