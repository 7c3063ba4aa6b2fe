//! `medfed audit verify`: check a hash-chained audit log and name its first bad record.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct VerifyArgs {
    /// The audit log (JSON lines; its signed head `<log>.head` must lie beside it)
    #[arg(long)]
    log: PathBuf,
    /// The signer's Ed25519 public key: 64 hex digits, or a file holding them (the hub's
    /// `<keys>/audit.pub`, a site's `<storage.dir>/audit.pub`)
    #[arg(long)]
    public_key: String,
}

pub fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let text = if std::path::Path::new(&args.public_key).is_file() {
        std::fs::read_to_string(&args.public_key)
            .with_context(|| format!("reading {}", args.public_key))?
    } else {
        args.public_key.clone()
    };
    // A private key file has the same form as a public one (32 bytes, hex): when the log
    // verifies under the key derived from what was passed, say what it is.
    let passed_private = || {
        medfed_audit::public_key_of_private(&text)
            .is_ok_and(|derived| medfed_audit::verify(&args.log, &derived).is_ok())
    };
    let private_key_error = || {
        anyhow::anyhow!(
            "{} is the private signing key, not the public key: verify with the .pub file beside \
             it ({}); keep the private key on the machine that writes the log",
            args.public_key,
            medfed_audit::public_key_path(std::path::Path::new(&args.public_key)).display()
        )
    };
    let key = match medfed_audit::parse_public_key(&text) {
        Ok(k) => k,
        Err(_) if passed_private() => return Err(private_key_error()),
        Err(e) => return Err(e.into()),
    };
    match medfed_audit::verify(&args.log, &key) {
        Ok(v) => {
            println!(
                "{}: OK, {} records, {} signed checkpoints, last hash {}",
                args.log.display(),
                v.records,
                v.checkpoints,
                v.last_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            if passed_private() {
                return Err(private_key_error());
            }
            let at = if problem.line == 0 {
                "head".to_string()
            } else {
                format!("line {}", problem.line)
            };
            println!("{}: FAILED at {at}: {}", args.log.display(), problem.reason);
            Ok(ExitCode::from(2))
        }
    }
}
