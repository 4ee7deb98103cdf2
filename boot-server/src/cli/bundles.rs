//! `env export` and `env import`: the bundle streams between a file (or
//! stdout / stdin) and the server, with a progress bar on a terminal
//! (indicatif) and plain progress lines otherwise (on stderr, so `-o -`
//! keeps stdout for the bundle); map files are parsed here and sent as
//! query parameters.

use super::client::Client;
use super::{enc, show, Failure};
use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Progress: a bar on a terminal, else a line every few seconds.
struct Progress {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    last: Mutex<Instant>,
    t0: Instant,
}

impl Progress {
    fn new(what: &'static str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let tmpl = if total.is_some() {
                "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}"
            } else {
                "{msg} {spinner} {bytes} {bytes_per_sec} {elapsed}"
            };
            b.set_style(
                indicatif::ProgressStyle::with_template(tmpl)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(what);
            b
        });
        Progress {
            what,
            bar,
            last: Mutex::new(Instant::now()),
            t0: Instant::now(),
        }
    }

    fn at(&self, n: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let (Some(t), None) = (total, b.length()) {
                b.set_length(t);
            }
            b.set_position(n);
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= Duration::from_secs(2) {
            *last = Instant::now();
            eprintln!(
                "{}: {} MB after {:.0} s",
                self.what,
                n / 1_000_000,
                self.t0.elapsed().as_secs_f64()
            );
        }
    }

    fn done(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let s = self.t0.elapsed().as_secs_f64();
        eprintln!(
            "{}: {:.1} MB in {:.1} s ({:.1} MB/s)",
            self.what,
            n as f64 / 1e6,
            s,
            n as f64 / 1e6 / s.max(1e-3)
        );
    }
}

/// `env export NAME -o FILE [--halt]`.
pub async fn export(c: &Client, name: &str, output: &str, halt: bool) -> Result<(), Failure> {
    let path = format!(
        "/api/environments/{}/export{}",
        enc(name),
        if halt { "?halt=true" } else { "" }
    );
    let progress = Progress::new("export", None);
    let written = if output == "-" {
        let mut out = tokio::io::stdout();
        c.download(&path, &mut out, &|n, _| progress.at(n, None))
            .await?
    } else {
        // Written beside the target and renamed: a failed export leaves no
        // partial bundle under the name asked for.
        let target = PathBuf::from(output);
        let tmp = target.with_file_name(format!(
            ".{}.partial",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("bundle")
        ));
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let r = c
            .download(&path, &mut f, &|n, _| progress.at(n, None))
            .await;
        match r {
            Ok(n) => {
                f.sync_all().await.context("sync")?;
                tokio::fs::rename(&tmp, &target)
                    .await
                    .with_context(|| format!("renaming to {}", target.display()))?;
                n
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
        }
    };
    progress.done(written);
    if output != "-" {
        eprintln!("wrote {output} ({written} bytes)");
    }
    Ok(())
}

/// Options of `env import`.
pub struct ImportArgs {
    /// `--as`.
    pub as_name: Option<String>,
    /// `--subnet`.
    pub subnet: Option<String>,
    /// `--map-addresses`.
    pub map_addresses: Option<PathBuf>,
    /// `--map-nodes`.
    pub map_nodes: Option<PathBuf>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--json`.
    pub json: bool,
}

/// Reads a map file: `FROM TO` (or `FROM=TO`) per line, `#` comments.
fn map_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '=')
            .filter(|p| !p.is_empty())
            .collect();
        let [a, b] = parts[..] else {
            bail!("{}:{}: write FROM TO", path.display(), i + 1);
        };
        if a.contains(',') || b.contains(',') {
            bail!("{}:{}: no commas in names", path.display(), i + 1);
        }
        out.push((a.to_string(), b.to_string()));
    }
    Ok(out)
}

fn query_pairs(pairs: &[(String, String)]) -> String {
    enc_query(
        &pairs
            .iter()
            .map(|(a, b)| format!("{a}={b}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn enc_query(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `env import FILE ...`.
pub async fn import(c: &Client, file: &str, a: ImportArgs) -> Result<(), Failure> {
    let mut q = Vec::new();
    if let Some(n) = &a.as_name {
        q.push(format!("as={}", enc_query(n)));
    }
    if let Some(s) = &a.subnet {
        q.push(format!("subnet={}", enc_query(s)));
    }
    if let Some(p) = &a.map_addresses {
        q.push(format!("map_addresses={}", query_pairs(&map_file(p)?)));
    }
    if let Some(p) = &a.map_nodes {
        q.push(format!("map_nodes={}", query_pairs(&map_file(p)?)));
    }
    if a.dry_run {
        q.push("dry_run=true".into());
    }
    let path = if q.is_empty() {
        "/api/bundles".to_string()
    } else {
        format!("/api/bundles?{}", q.join("&"))
    };
    let (v, sent) = if file == "-" {
        let p = std::sync::Arc::new(Progress::new("import", None));
        let p2 = p.clone();
        let v = c
            .upload_stream(
                Method::POST,
                &path,
                tokio::io::stdin(),
                "application/zstd",
                move |n| p2.at(n, None),
            )
            .await?;
        (v, p)
    } else {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {file}"))?;
        let len = f.metadata().await.ok().map(|m| m.len());
        let p = std::sync::Arc::new(Progress::new("import", len));
        let p2 = p.clone();
        let v = c
            .upload_stream(Method::POST, &path, f, "application/zstd", move |n| {
                p2.at(n, len)
            })
            .await?;
        (v, p)
    };
    sent.done(std::fs::metadata(file).map(|m| m.len()).unwrap_or_default());
    if a.json {
        show(&v);
    } else {
        print_plan(&v);
    }
    Ok(())
}

fn print_plan(v: &Value) {
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let head = if v["dry_run"].as_bool() == Some(true) {
        "plan (dry run, nothing created)"
    } else {
        "imported"
    };
    println!(
        "{head}: environment {} (from {} on {}, made {}), inactive",
        s(&v["environment"]),
        s(&v["source_environment"]),
        s(&v["source_server"]),
        s(&v["created_at"])
    );
    println!(
        "  verified {} entries, {:.1} MB of disk data",
        v["verified_entries"],
        v["disk_bytes"].as_f64().unwrap_or(0.0) / 1e6
    );
    for i in v["images"].as_array().into_iter().flatten() {
        println!("  image {}: {}", s(&i["name"]), s(&i["action"]));
    }
    if v["base"].is_object() {
        println!(
            "  base disk {}: {}",
            s(&v["base"]["name"]),
            s(&v["base"]["action"])
        );
    }
    for o in v["overlays"].as_array().into_iter().flatten() {
        println!(
            "  overlay {}: create ({:.1} MB allocated)",
            s(&o["name"]),
            o["bytes"].as_f64().unwrap_or(0.0) / 1e6
        );
    }
    if !v["addresses"].is_null() {
        println!("  addresses {}", s(&v["addresses"]));
    }
    for sl in v["slots"].as_array().into_iter().flatten() {
        println!(
            "  slot {}: {} {} (was {}) node {}",
            sl["index"],
            s(&sl["hostname"]),
            s(&sl["ip"]),
            s(&sl["ip_from"]),
            sl["node"].as_str().unwrap_or("(engine allocates)")
        );
    }
    for t in v["tokens_to_create"].as_array().into_iter().flatten() {
        println!(
            "  token to create (not imported, new secret): {}",
            s(&t["command"])
        );
    }
    let conflicts = v["conflicts"].as_array().cloned().unwrap_or_default();
    if conflicts.is_empty() {
        if v["dry_run"].as_bool() == Some(true) {
            println!("  no conflicts: the import would succeed");
        } else {
            println!(
                "  activate it with: boot-server env activate {}",
                s(&v["environment"])
            );
        }
    } else {
        for cf in conflicts {
            println!("  CONFLICT: {}", cf.as_str().unwrap_or("?"));
        }
    }
}
