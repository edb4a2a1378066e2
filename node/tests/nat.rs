//! Nodes behind NAT, for real: network namespaces made by this test, in which a provider
//! sits behind one NAT (nftables masquerade), a client behind another, and a relay on the
//! "public" side between them, with the chain (anvil) beside the relay. `attrinet serve`
//! runs unchanged behind its NAT: AutoNAT finds it private, it reserves a slot on the relay
//! and advertises the relayed address; `attrinet models` and `attrinet query` from behind
//! the other NAT reach it through the relay. DCUtR's hole punching is tried on that relayed
//! connection; its outcome is printed, not asserted (see the end of the test).
//!
//! ```text
//!   root (this test, anvil) ── pub (relay) ──┬── natA ── hostA (provider)
//!          10.231.9.1/24      10.231.{9,1,2}.x └── natB ── hostB (client)
//! ```
//!
//! The namespaces, their links and the routes through them are removed when the test ends,
//! however it ends. Where the kernel refuses namespaces the test says so and does nothing.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Killed, bin, lines, text};

/// Runs a command that must succeed (the namespace plumbing).
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(out.status.success(), "{}: {}", args.join(" "), text(&out.stderr));
}

/// The test's namespaces; dropping it deletes them, and with them their links and routes.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn exec(&self, ns: &str, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        sh(&all);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A veth pair from `a` (a namespace, or `None` for this one) to namespace `b`, with
/// `a_ip`/`b_ip` (CIDR) on its ends.
fn link(ns: &Namespaces, (a, a_dev, a_ip): (Option<&str>, &str, &str), (b, b_dev, b_ip): (&str, &str, &str)) {
    sh(&["ip", "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b]);
    match a {
        Some(a) => {
            sh(&["ip", "link", "set", a_dev, "netns", a]);
            ns.exec(a, &["ip", "addr", "add", a_ip, "dev", a_dev]);
            ns.exec(a, &["ip", "link", "set", a_dev, "up"]);
        }
        None => {
            sh(&["ip", "addr", "add", a_ip, "dev", a_dev]);
            sh(&["ip", "link", "set", a_dev, "up"]);
        }
    }
    ns.exec(b, &["ip", "addr", "add", b_ip, "dev", b_dev]);
    ns.exec(b, &["ip", "link", "set", b_dev, "up"]);
}

/// The namespaces of the module's picture, or `None` where the kernel refuses them.
fn topology(tag: &str) -> Option<Namespaces> {
    let name = |n: &str| format!("{tag}{n}");
    let probe = Command::new("ip").args(["netns", "add", &name("pub")]).output().expect("ip (iproute2) is installed");
    if !probe.status.success() {
        eprintln!("skipping the NAT test: the kernel refuses network namespaces here: {}", text(&probe.stderr).trim());
        return None;
    }
    let mut ns = Namespaces { names: vec![name("pub")] };
    for n in ["natA", "natB", "hostA", "hostB"] {
        sh(&["ip", "netns", "add", &name(n)]);
        ns.names.push(name(n));
    }
    for n in ns.names.clone() {
        ns.exec(&n, &["ip", "link", "set", "lo", "up"]);
    }
    let (p, na, nb, ha, hb) = (name("pub"), name("natA"), name("natB"), name("hostA"), name("hostB"));
    link(&ns, (None, &format!("{tag}r"), "10.231.9.1/24"), (&p, &format!("{tag}R"), "10.231.9.2/24"));
    link(&ns, (Some(&p), &format!("{tag}a"), "10.231.1.1/24"), (&na, &format!("{tag}A"), "10.231.1.2/24"));
    link(&ns, (Some(&p), &format!("{tag}b"), "10.231.2.1/24"), (&nb, &format!("{tag}B"), "10.231.2.2/24"));
    link(&ns, (Some(&na), &format!("{tag}c"), "192.168.231.1/24"), (&ha, &format!("{tag}C"), "192.168.231.2/24"));
    link(&ns, (Some(&nb), &format!("{tag}d"), "192.168.232.1/24"), (&hb, &format!("{tag}D"), "192.168.232.2/24"));
    // This namespace reaches the public side through pub; the route goes with the link.
    sh(&["ip", "route", "add", "10.231.0.0/16", "via", "10.231.9.2"]);
    ns.exec(&p, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (nat, wan, via) in [(&na, format!("{tag}A"), "10.231.1.1"), (&nb, format!("{tag}B"), "10.231.2.1")] {
        ns.exec(nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.exec(nat, &["ip", "route", "add", "default", "via", via]);
        let rules = format!(
            "table ip nat {{ chain post {{ type nat hook postrouting priority 100; oifname \"{wan}\" masquerade; }}; }}"
        );
        ns.exec(nat, &["nft", &rules]);
    }
    ns.exec(&ha, &["ip", "route", "add", "default", "via", "192.168.231.1"]);
    ns.exec(&hb, &["ip", "route", "add", "default", "via", "192.168.232.1"]);
    Some(ns)
}

/// `attrinet --data-dir DIR ARGS…` inside namespace `ns`.
fn attrinet_in(ns: &str, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, bin(), "--data-dir"]).arg(dir).args(args);
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("run attrinet");
    eprintln!("$ {c:?}\n{}{}", text(&out.stdout), text(&out.stderr));
    out
}

fn attrinet_in_root(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--data-dir").arg(dir).args(args);
    c
}

/// Waits for a line containing `what`.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, what: &str, within: Duration) -> String {
    first_line(rx, &[what], within).unwrap_or_else(|| panic!("no {what:?} within {within:?}"))
}

/// The first line containing one of `any` within `within`, if one comes.
fn first_line(rx: &std::sync::mpsc::Receiver<String>, any: &[&str], within: Duration) -> Option<String> {
    let start = Instant::now();
    loop {
        let line = rx.recv_timeout(within.checked_sub(start.elapsed())?).ok()?;
        if any.iter().any(|w| line.contains(w)) {
            return Some(line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_behind_nat_is_reached_through_a_relay_and_then_directly() {
    let tag = format!("an{}", std::process::id() % 100_000);
    let Some(ns) = topology(&tag) else { return };
    let root = tempfile::tempdir().unwrap();
    let (anvil, deployment, _) = common::chain(Some([10, 231, 9, 1].into()), 30).await;

    // The relay, on the public side.
    let relay_dir = root.path().join("relay");
    assert!(run(attrinet_in_root(&relay_dir, &["keys", "new"])).status.success());
    let mut relay = Killed(
        attrinet_in(&format!("{tag}pub"), &relay_dir, &["relay", "--p2p-listen", "/ip4/0.0.0.0/tcp/0", "--lan"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let relay_out = lines(&mut relay.0, "relay");
    // Its address on each NAT's side of the public network.
    let mut seen = Vec::new();
    let addr_on = |net: &str, seen: &mut Vec<String>| loop {
        if let Some(a) = seen.iter().find(|l| l.contains(&format!("/ip4/{net}/"))) {
            return a.trim_start_matches("listening on ").to_string();
        }
        seen.push(relay_out.recv_timeout(Duration::from_secs(30)).expect("the relay prints its addresses"));
    };
    let relay_a = addr_on("10.231.1.1", &mut seen);
    let relay_b = addr_on("10.231.2.1", &mut seen);

    // The provider, behind NAT A: serve as anywhere else, joined through the relay.
    let tiny = root.path().join("tiny.gguf");
    attrinet_compute::testing::write_random_llama(&tiny, &attrinet_compute::testing::TinyLlamaSpec::default()).unwrap();
    let (node_dir, _) = common::participant(root.path(), "node", &anvil, deployment, "/ip4/0.0.0.0/tcp/0", None).await;
    let mut serve_cmd = attrinet_in(&format!("{tag}hostA"), &node_dir, &["serve", "--model"]);
    serve_cmd
        .arg(&tiny)
        .args(["--price-in", "0.01eth", "--price-out", "0.1eth", "--backend", "cpu", "--lan", "--bootstrap", &relay_a])
        .env("RUST_LOG", "warn,p2p::nat=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut serve = Killed(serve_cmd.spawn().unwrap());
    let serve_out = lines(&mut serve.0, "serve");
    wait_line(&serve_out, "private: listening through a relay", Duration::from_secs(120));
    wait_line(&serve_out, "reserved a slot on a relay", Duration::from_secs(30));

    // The client, behind NAT B, finds the provider's advert and asks it. (A node joined
    // through a relay sees an advert when its provider next publishes: on a new direct
    // subscriber, which the DHT's first lookups usually make it, or within the 20 s period.)
    let (client_dir, _) =
        common::participant(root.path(), "client", &anvil, deployment, "/ip4/0.0.0.0/tcp/0", None).await;
    let net = ["--lan", "--bootstrap", relay_b.as_str()];
    let mut models = attrinet_in(
        &format!("{tag}hostB"),
        &client_dir,
        &["models", "--model", "tiny random llama (seed 1)", "--wait-secs", "60"],
    );
    models.args(net);
    let models = run(models);
    assert!(models.status.success());
    let provider = attrinet_node::keys::load(&node_dir).unwrap().address();
    let listed = text(&models.stdout);
    assert!(listed.contains(&provider.to_string()), "the provider behind NAT is listed: {listed}");
    let mut query = attrinet_in(
        &format!("{tag}hostB"),
        &client_dir,
        &["query", "hello there", "--max-tokens", "4", "--wait-secs", "60"],
    );
    query.args(net).env("RUST_LOG", "warn,p2p::nat=debug");
    let query = run(query);
    assert!(query.status.success(), "the query reaches the provider behind NAT: {}", text(&query.stderr));
    let said = text(&query.stderr);
    assert!(said.contains("seq 1:"), "{said}");
    assert!(said.contains("connected through a relay"), "its private address is unreachable: {said}");
    // Hole punching (DCUtR) is tried on every relayed connection; whether it succeeds here
    // depends on the namespaces' NATs (they answer an unsolicited SYN with a reset, which
    // ends TCP's crossing SYNs), so it is reported, not asserted.
    let punched =
        first_line(&serve_out, &["hole punching failed", "upgraded a relayed connection"], Duration::from_secs(30));
    eprintln!("hole punching as the provider saw it: {punched:?}");
    drop(serve);
    drop(relay);
    drop(ns);
}
