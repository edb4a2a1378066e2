//! Integration tests of attrinet-chain against a real anvil (the pinned npm build, started
//! per test on a free loopback port in `--optimism` mode, killed when the test ends).

mod util;

mod anvil;
mod attribution;
mod digest;
mod follower;
mod fraud;
mod gas;
mod registry;
mod settle;
mod settlement_loop;
mod watcher;
