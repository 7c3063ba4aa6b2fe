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
    /// The signer's Ed25519 public key: 64 hex digits, or a file holding them
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
    let key = medfed_audit::parse_public_key(&text)?;
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
