//! The `attrinet` binary as users run it, against a real anvil and the real model: a
//! provider started with `attrinet serve` (which registers itself and the model), a client
//! that asks with `attrinet query` (opening a channel on the first query and reusing it
//! after, running out of deposit and topping it up), `channel status`, `models`,
//! `model register`, `earnings`, the provider's settlement checked by `attrinet watch` (the
//! client's, and a third party's that fetches the batch from the provider over the
//! network), and the client leaving with `channel thaw` and `channel withdraw`.

use crate::common::{self, Killed, bin, text};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use attrinet_chain::ChainClient;
use attrinet_market::{ModelId, Wei};

const ETH: u128 = 1_000_000_000_000_000_000;
const THAW_DELAY: u64 = 30;

fn model_path() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let model = Path::new(&manifest).join("../models/SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(model.exists(), "{} missing: scripts/test runs scripts/fetch-model first", model.display());
    model
}

/// Runs `attrinet --data-dir DIR ARGS…` to completion.
fn attrinet(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin()).arg("--data-dir").arg(dir).args(args).output().expect("run attrinet");
    eprintln!(
        "$ attrinet {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_query_settle_watch_and_leave_through_the_cli() {
    let model = model_path();
    let root = tempfile::tempdir().unwrap();
    let (anvil, deployment, deployer) = common::chain(None, THAW_DELAY).await;
    let reader = ChainClient::connect(&anvil.endpoint(), deployer.evm.clone(), deployment).unwrap();

    // The provider: everything from its config file and a few flags.
    let (node_dir, node) =
        common::participant(root.path(), "node", &anvil, deployment, "/ip4/127.0.0.1/tcp/0", None).await;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut serve = Killed(
        Command::new(bin())
            .arg("--data-dir")
            .arg(&node_dir)
            .args(["serve", "--model"])
            .arg(&model)
            .args(["--price-in", "0.01eth", "--price-out", "0.1eth", "--backend", "cpu"])
            // Settle at once whatever the amount and gas: the test's few tokens are worth
            // less than a settlement's gas.
            .args(["--settle-every", "1", "--settle-threshold", "1", "--settle-max-gas-bps", "10000"])
            .args(["--metrics", &metrics_addr.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Both of serve's outputs, line by line, echoed for the test log.
    let rx = common::lines(&mut serve.0, "serve");
    let mut measured = None;
    let bootstrap = loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("serve prints its address");
        if let Some((_, rest)) = line.split_once(": measured ") {
            measured = rest.split(' ').next().and_then(|n| n.parse::<u32>().ok());
        }
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    let measured = measured.expect("serve prints the speed it measured");
    assert!(measured > 0);

    // serve registered the node (with its key) and the model (at the given prices).
    assert_eq!(reader.node_key(node.address()).await.unwrap(), Some(node.public_key()));
    let model_id = ModelId::from(attrinet_compute::Model::load(&model).unwrap().id().0);
    let terms = reader.terms(model_id).await.unwrap().expect("serve registered the model");
    assert_eq!((terms.price.per_1k_input, terms.price.per_1k_output), (Wei(ETH / 100), Wei(ETH / 10)));

    // A model owner registers another model with `model register`: its id is the file's
    // hash, its terms what the flags say; registering it twice is refused.
    let tiny = root.path().join("tiny.gguf");
    attrinet_compute::testing::write_random_llama(&tiny, &attrinet_compute::testing::TinyLlamaSpec::default()).unwrap();
    let tiny_id = ModelId::from(attrinet_compute::Model::load(&tiny).unwrap().id().0);
    let args = [
        "model",
        "register",
        "--model",
        tiny.to_str().unwrap(),
        "--price-in",
        "3gwei",
        "--price-out",
        "7gwei",
        "--split",
        "6000,3000,1000,0",
    ];
    let registered = attrinet(&node_dir, &args);
    assert!(registered.status.success());
    let t = reader.terms(tiny_id).await.unwrap().expect("registered");
    assert_eq!(
        (t.price.per_1k_input, t.price.per_1k_output, t.split),
        (Wei(3_000_000_000), Wei(7_000_000_000), attrinet_market::Split::new(6000, 3000, 1000, 0).unwrap())
    );
    assert_eq!(reader.beneficiaries(tiny_id).await.unwrap().0, node.address(), "the registering account owns it");
    assert_eq!(attrinet(&node_dir, &args).status.code(), Some(1), "a second registration is refused");

    // The client: the first query opens a channel, the second reuses it.
    let (client_dir, client) =
        common::participant(root.path(), "client", &anvil, deployment, "/ip4/127.0.0.1/tcp/0", Some(bootstrap.clone()))
            .await;
    let models = attrinet(&client_dir, &["models", "--wait-secs", "2"]);
    assert!(models.status.success());
    let listed = text(&models.stdout);
    assert!(
        listed.contains("Smollm2")
            && listed.contains(&node.address().to_string())
            && listed.contains("100000000000000000"),
        "{listed}"
    );
    // The advert carries the speed the node measured on its engine.
    let row = listed.lines().find(|l| l.contains(&node.address().to_string())).unwrap();
    assert_eq!(row.split_whitespace().rev().nth(1), Some(measured.to_string().as_str()), "{row}");

    // A small deposit, so that it runs out below.
    let first = attrinet(
        &client_dir,
        &["query", "What is the capital of France?", "--max-tokens", "8", "--deposit", "0.002eth"],
    );
    assert!(first.status.success());
    assert!(text(&first.stdout).contains("Paris"), "answer: {}", text(&first.stdout));
    let err = text(&first.stderr);
    assert!(err.contains("opened channel") && err.contains("seq 1:"), "{err}");
    // With the model file, the client counts its prompt's tokens itself: the receipt bills
    // exactly that many.
    let second = attrinet(
        &client_dir,
        &["query", "Say hello in Spanish.", "--max-tokens", "6", "--tokenizer-from", model.to_str().unwrap()],
    );
    assert!(second.status.success(), "{}", text(&second.stderr));
    let err = text(&second.stderr);
    assert!(!err.contains("opened channel") && err.contains("seq 2:"), "{err}");
    let exact = {
        use attrinet_p2p::PromptCounter;
        let counter = attrinet_node::PromptCount(std::sync::Arc::new(attrinet_compute::Model::load(&model).unwrap()));
        let chat = vec![attrinet_p2p::ChatMessage { role: "user".into(), content: "Say hello in Spanish.".into() }];
        counter.count(&attrinet_p2p::Prompt::Chat(chat)).unwrap()
    };
    assert!(err.contains(&format!(": {exact} input + ")), "billed {exact} input tokens: {err}");
    let bad = attrinet(&client_dir, &["query", "Hi", "--tokenizer-from", "/nonexistent.gguf"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("--tokenizer-from /nonexistent.gguf"), "{}", text(&bad.stderr));

    // A price cap below every offer: a clear error, exit status 1, nothing paid.
    let capped = attrinet(&client_dir, &["query", "Hi", "--max-tokens", "4", "--max-price", "1"]);
    assert_eq!(capped.status.code(), Some(1));
    assert!(text(&capped.stderr).contains("error:"), "{}", text(&capped.stderr));

    let status = attrinet(&client_dir, &["channel", "status"]);
    assert!(status.status.success());
    let status = text(&status.stdout);
    assert!(status.contains("(payer)") && status.contains("last seq 2"), "{status}");
    let channel = status.split_whitespace().nth(1).unwrap().to_string();
    let id = attrinet_node::client::parse_channel(&channel).unwrap();
    let info = reader.channel(id).await.unwrap();
    assert_eq!(
        (info.payer, info.provider, info.deposit, info.payer_key),
        (client.address(), node.address(), Wei(ETH / 500), client.public_key())
    );

    // The deposit cannot cover a third answer at 8 tokens: refused before any work.
    let broke = attrinet(&client_dir, &["query", "Name three primary colours.", "--max-tokens", "8"]);
    assert_eq!(broke.status.code(), Some(1));
    assert!(text(&broke.stderr).contains("deposit"), "{}", text(&broke.stderr));
    // Topped up on chain, the provider sees the new deposit on the next request.
    let top_up = attrinet(&client_dir, &["channel", "top-up", &channel, "--amount", "0.048eth"]);
    assert!(
        top_up.status.success() && text(&top_up.stdout).contains(&format!("deposit now {} wei", ETH / 20)),
        "{}",
        text(&top_up.stdout)
    );
    let third = attrinet(&client_dir, &["query", "Name three primary colours.", "--max-tokens", "8"]);
    assert!(third.status.success());
    assert!(text(&third.stderr).contains("seq 3:"), "{}", text(&third.stderr));

    // The provider's metrics are read from its store: three receipts, worth what the
    // client's last receipt says the channel owes.
    let (code, metrics) = common::http(metrics_addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "{metrics}");
    let cumulative = text(&third.stderr).split("channel total ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    assert!(metrics.contains("attrinet_provider_receipts_total 3\n"), "{metrics}");
    assert!(metrics.contains(&format!("attrinet_provider_earned_wei_total {cumulative}\n")), "{metrics}");

    // The client's store holds exactly what it paid, and it audits clean.
    let audit = attrinet(&client_dir, &["store", "audit"]);
    assert!(
        audit.status.success() && text(&audit.stdout).contains("1 channels, 3 receipts"),
        "{}",
        text(&audit.stdout)
    );

    // The provider settles what it holds (threshold 1 wei: the first settlement may come
    // before the second query), and the client's watcher, holding the receipts, verifies
    // it within its window.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pending = loop {
        if let Some(p) = reader.pending(id).await.unwrap() {
            break p;
        }
        assert!(reader.channel(id).await.unwrap().settled_seq.0 == 0, "finalized before this poll saw it pending");
        assert!(Instant::now() < deadline, "the provider did not settle within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!((1..=3).contains(&pending.seq.0));
    // `earnings` shows the node's share of it as pending, exactly as declared on chain.
    let runs = reader.settled_payouts(id, pending.seq).await.unwrap().expect("Settled event");
    let node_share: u128 = runs.iter().map(|r| r.parts.node.0).sum();
    let earned = text(&attrinet(&node_dir, &["earnings"]).stdout);
    assert!(
        earned.contains(&format!("model {model_id} as node: 0 wei finalized, {node_share} wei pending")),
        "{earned}"
    );
    let watch = attrinet(&client_dir, &["watch", "--steps", "1", "--offline"]);
    assert!(watch.status.success());
    let expected = format!("verified channel {channel} settlement to seq {}", pending.seq.0);
    assert!(text(&watch.stdout).contains(&expected), "{}", text(&watch.stdout));
    // A watcher that is party to nothing fetches the batch from the provider over the
    // network, checks it against the root on chain, and verifies the settlement too.
    let (watcher_dir, _) = common::participant(
        root.path(),
        "watcher",
        &anvil,
        deployment,
        "/ip4/127.0.0.1/tcp/0",
        Some(bootstrap.clone()),
    )
    .await;
    let third = text(&attrinet(&watcher_dir, &["watch", "--steps", "1"]).stdout);
    assert!(
        third.contains(&format!("channel {channel}: fetched {} receipts to seq {}", pending.seq.0, pending.seq.0)),
        "{third}"
    );
    assert!(third.contains(&expected), "{third}");

    // Everything is finalised by the provider, window after window; then the client leaves.
    let deadline = Instant::now() + Duration::from_secs(90);
    while reader.channel(id).await.unwrap().settled_seq.0 != 3 {
        assert!(Instant::now() < deadline, "the provider did not settle and finalize every receipt within 90 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let settled = reader.channel(id).await.unwrap().settled;
    assert!(settled > Wei::ZERO);
    let credited = reader.credited(node.address()).await.unwrap();
    assert!(credited > Wei::ZERO, "the node was credited its share");
    // `earnings` reports it (default: this data dir's own account).
    let earned = text(&attrinet(&node_dir, &["earnings"]).stdout);
    assert!(earned.contains(&format!("withdrawable now: {} wei", credited.0)), "{earned}");
    // The node registered the model, so it is its owner and data pool too: its three
    // finalised shares are exactly what it was credited, and nothing is pending.
    let finalized: u128 = ["node", "model owner", "data pool"]
        .iter()
        .map(|role| {
            let prefix = format!("model {model_id} as {role}: ");
            let line = earned
                .lines()
                .find_map(|l| l.trim().strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {role} line: {earned}"));
            assert!(line.ends_with(", 0 wei pending"), "{line}");
            line.split(' ').next().unwrap().parse::<u128>().unwrap()
        })
        .sum();
    assert_eq!(finalized, credited.0, "{earned}");
    assert!(attrinet(&client_dir, &["channel", "thaw", &channel]).status.success());
    // The provider sees the thaw and serves that channel no more; the client's next query
    // opens a new channel instead.
    let frozen = format!("channel {channel} is thawing: no more service on it");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rx.try_iter().any(|l| l == frozen) {
        assert!(Instant::now() < deadline, "serve did not notice the thaw");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_thaw = attrinet(&client_dir, &["query", "What is 12 plus 30?", "--max-tokens", "4"]);
    assert!(after_thaw.status.success());
    let err = text(&after_thaw.stderr);
    assert!(err.contains("opened channel") && err.contains("seq 1:") && !err.contains(&channel), "{err}");
    let early = attrinet(&client_dir, &["channel", "withdraw", &channel]);
    assert_eq!(early.status.code(), Some(1), "withdrawing before the thaw ends is refused");
    anvil.advance(THAW_DELAY + 1).await.unwrap();
    let before = reader.native_balance(client.address()).await.unwrap();
    let withdraw = attrinet(&client_dir, &["channel", "withdraw", &channel]);
    assert!(withdraw.status.success());
    let info = reader.channel(id).await.unwrap();
    assert!(info.closed);
    let after = reader.native_balance(client.address()).await.unwrap();
    // Back: the deposit less what was settled, less the withdrawal's gas (well under 0.001 ETH).
    let back = after.0 - before.0;
    let unspent = ETH / 20 - settled.0;
    assert!(back <= unspent && unspent - back < ETH / 1000, "got back {back}, unspent {unspent}");

    // Another node offering the same model with a datanet the model is not registered
    // with is refused before it serves anything: its weights would pay non-contributors.
    let data = root.path().join("data");
    let owner_dir = data.join(client.address().to_string());
    std::fs::create_dir_all(&owner_dir).unwrap();
    std::fs::write(owner_dir.join("notes.txt"), "The capital of France is Paris. It lies on the Seine.\n").unwrap();
    let index = root.path().join("datanet.idx");
    let built = attrinet(
        &client_dir,
        &[
            "datanet",
            "build",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            index.to_str().unwrap(),
            "--min-span",
            "4",
        ],
    );
    assert!(built.status.success() && text(&built.stdout).contains("datanet root: 0x"), "{}", text(&built.stdout));
    // A client checking attribution against an index that is not the registered datanet,
    // or talking to a chain with another id than its configuration's, is stopped at once.
    let stale = attrinet(&client_dir, &["query", "Hi", "--datanet", &format!("{model_id}={}", index.display())]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(text(&stale.stderr).contains("registered one"), "{}", text(&stale.stderr));
    let wrong_chain = attrinet(&client_dir, &["query", "Hi", "--chain-id", "10"]);
    assert_eq!(wrong_chain.status.code(), Some(1));
    assert!(text(&wrong_chain.stderr).contains("has id 31337"), "{}", text(&wrong_chain.stderr));
    // Precedence: the environment over the file (the file has no chain id: 31337 by
    // default), and a flag over the environment.
    let status = |env: &str, flags: &[&str]| {
        Command::new(bin())
            .arg("--data-dir")
            .arg(&client_dir)
            .args(["channel", "status"])
            .args(flags)
            .env("ATTRINET_CHAIN_ID", env)
            .output()
            .unwrap()
    };
    let from_env = status("10", &[]);
    assert!(
        !from_env.status.success() && text(&from_env.stderr).contains("the configuration says 10"),
        "{}",
        text(&from_env.stderr)
    );
    assert!(status("10", &["--chain-id", "31337"]).status.success(), "the flag wins over the environment");
    let (other_dir, _) =
        common::participant(root.path(), "other-node", &anvil, deployment, "/ip4/127.0.0.1/tcp/0", None).await;
    let args = [
        "serve",
        "--model",
        model.to_str().unwrap(),
        "--price-in",
        "0.01eth",
        "--price-out",
        "0.1eth",
        "--backend",
        "cpu",
    ];
    let refused = attrinet(&other_dir, &[&args[..], &["--datanet", index.to_str().unwrap()]].concat());
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("is registered with datanet"), "{}", text(&refused.stderr));
    // Issue 14, attack 12: nor does it take another registrant's split without saying so
    // (serve used to accept whatever split the chain held, silently).
    let split = attrinet(&other_dir, &[&args[..], &["--split", "9000,500,250,250"]].concat());
    assert_eq!(split.status.code(), Some(1));
    assert!(text(&split.stderr).contains("registered with the split 7000,2000,500,500"), "{}", text(&split.stderr));
    let other = attrinet_node::keys::load(&other_dir).unwrap();
    assert_eq!(reader.node_key(other.address()).await.unwrap(), None, "a refused serve registers nothing");

    // Handing the model to another owner changes who *will* be paid, not who was:
    // `earnings` still shows the node's finalized owner share; a settlement still pending
    // (the query after the thaw) will pay the new owner.
    let owner_line = |dir: &Path| {
        let out = text(&attrinet(dir, &["earnings"]).stdout);
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("model {model_id} as model owner: ")).map(str::to_string))
    };
    let before = owner_line(&node_dir).expect("the node owned the model");
    let owner = ChainClient::connect(&anvil.endpoint(), node.evm.clone(), deployment).unwrap();
    owner.transfer_model(model_id, client.address()).await.unwrap();
    assert_eq!(reader.beneficiaries(model_id).await.unwrap().0, client.address());
    let after = owner_line(&node_dir).expect("still the finalized share");
    let finalized = |l: &str| l.split(" wei finalized").next().unwrap().to_string();
    assert_eq!(finalized(&after), finalized(&before));
    assert_ne!(finalized(&before), "0");
    let new_owner = owner_line(&client_dir).expect("the pending share");
    assert_eq!(finalized(&new_owner), "0", "{new_owner}");
    assert!(!new_owner.ends_with(", 0 wei pending"), "{new_owner}");

    // Issue 14, attack 8: the (new) owner changes the model's datanet. The node stops
    // serving that model within a settlement pass rather than attribute against the old
    // datanet, but it does not stop: it goes on settling. (It used to exit, status 1, and
    // leave every channel's finalisation and thaw settlement undone.)
    let new_owner_chain = ChainClient::connect(&anvil.endpoint(), client.evm.clone(), deployment).unwrap();
    new_owner_chain.set_datanet(model_id, alloy_primitives::B256::repeat_byte(1), client.address()).await.unwrap();
    let stopped = format!("error: stopped serving model {model_id}: its datanet changed on chain");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rx.try_iter().any(|l| l.starts_with(&stopped)) {
        assert!(serve.0.try_wait().unwrap().is_none(), "serve exited on a datanet change");
        assert!(Instant::now() < deadline, "serve kept serving a model whose datanet changed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = attrinet(&client_dir, &["query", "Hi", "--max-tokens", "4"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(err.contains("no longer served") || err.contains("no provider offers"), "{err}");
    // The pending settlement's window passes: the node, still running, finalizes it, and
    // the new owner is paid its share.
    anvil.advance(16).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = owner_line(&client_dir).expect("the new owner's line");
        if finalized(&line) != "0" {
            assert!(line.ends_with(", 0 wei pending"), "{line}");
            break;
        }
        assert!(serve.0.try_wait().unwrap().is_none(), "serve exited");
        assert!(Instant::now() < deadline, "the node stopped finalizing after withdrawing the model: {line}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
