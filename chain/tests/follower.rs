//! The event follower: confirmations, a durable checkpoint, replay after a restart.

use attrinet_chain::{ChannelEvent, EventFollower, FileCheckpoint};
use attrinet_market::Wei;

use crate::util::{ETH, World};

fn follower(w: &World, path: &std::path::Path) -> EventFollower<FileCheckpoint> {
    EventFollower::new(
        w.watcher.chain.provider().clone(),
        w.deployment.channels,
        2,
        w.deployment.deploy_block,
        FileCheckpoint::new(path),
    )
    .unwrap()
}

fn names(events: &[attrinet_chain::FollowedEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e.event {
            ChannelEvent::Opened { .. } => "opened",
            ChannelEvent::Thawing { .. } => "thawing",
            ChannelEvent::Settled { .. } => "settled",
            ChannelEvent::Finalized { .. } => "finalized",
            ChannelEvent::Disputed { .. } => "disputed",
            ChannelEvent::Other => "other",
        })
        .collect()
}

#[tokio::test]
async fn waits_for_confirmations_resumes_from_its_checkpoint_and_replays_only_what_was_not_committed() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("follower.checkpoint");
    let mut f = follower(&w, &path);

    let (id, _) = w.payer.chain.open(w.node.address(), &w.payer.id.public_key(), Wei(ETH)).await.unwrap();
    assert!(f.poll().await.unwrap().is_empty(), "0 confirmations is not enough");
    w.anvil.mine(1).await.unwrap();
    assert!(f.poll().await.unwrap().is_empty(), "1 confirmation is not enough");
    w.anvil.mine(1).await.unwrap();
    let got = f.poll().await.unwrap();
    assert_eq!(names(&got), ["opened"]);
    match &got[0].event {
        ChannelEvent::Opened { channel, payer, deposit, .. } => {
            assert_eq!((*channel, *payer, *deposit), (id, w.payer.address(), Wei(ETH)));
        }
        other => panic!("{other:?}"),
    }
    f.commit(f.position()).unwrap();
    drop(f);

    // Events while the follower is down are read after its restart; the committed one is not.
    w.payer.chain.top_up(id, Wei(ETH)).await.unwrap();
    w.payer.chain.thaw(id).await.unwrap();
    w.anvil.mine(2).await.unwrap();
    let mut f = follower(&w, &path);
    let got = f.poll().await.unwrap();
    assert_eq!(names(&got), ["other", "thawing"]);
    // Commit only up to just before the thaw, as a watcher that has not finished with it.
    f.commit(got[1].cursor.before()).unwrap();
    assert!(f.poll().await.unwrap().is_empty(), "nothing new in this session");
    drop(f);

    let mut f = follower(&w, &path);
    let again = f.poll().await.unwrap();
    assert_eq!(names(&again), ["thawing"], "exactly the uncommitted log is replayed");
    assert_eq!(again[0].cursor, got[1].cursor);
}
