//! Integration tests of attrinet-node: one binary (each file below is a module of it;
//! `common` holds their shared helpers).

mod cli;
mod common;
mod devnet;
mod gateway;
mod nat;
mod opener;
mod serving;
mod watch;
