//! burn's CPU backend draws every random tensor (initial weights, dropout masks) from one
//! process-wide generator. Seeding it and drawing happen under this lock, and so does every
//! unseeded construction, so that a seeded run in one thread is not disturbed by another
//! thread's draws (tests run in parallel; a site may train two models at once).

use std::sync::{Mutex, MutexGuard};

static BURN_RNG: Mutex<()> = Mutex::new(());

pub(crate) fn lock() -> MutexGuard<'static, ()> {
    // A panic elsewhere while holding the lock leaves nothing inconsistent to protect.
    BURN_RNG.lock().unwrap_or_else(|p| p.into_inner())
}
