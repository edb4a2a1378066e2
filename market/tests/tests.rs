//! Integration tests of attrinet-market: one binary (each file below is a module of it).

mod attribution;
mod properties;
