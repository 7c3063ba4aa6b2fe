//! End-to-end tests of `medfed-deid`: whole folders in, folders and reports out.

mod freetext;
mod options;
mod pixels;
mod planted;
mod property;
mod real_files;
mod robustness;
mod support;
mod synthetic;
