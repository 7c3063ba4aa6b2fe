//! End-to-end tests of the radiomics crate: the IBSI digital phantom against every reference
//! value, and the processing chain on real and generated volumes.

mod chain;
mod phantom;
mod support;
