use anyhow::Result;
use clap::Args;

/// Print a new random key for the encrypted conversation log (base64, 32 bytes). Put it in
/// INTENTD_LOG_KEY or the file named by store.key_file; to rotate, prepend `new:KEY,` to the
/// existing list (the first key encrypts, the others stay readable).
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Prefix the key with this id (`id:KEY`), for rotation lists.
    #[arg(long)]
    pub id: Option<String>,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let key = intentd::store::crypto::generate_key();
    match args.id {
        Some(id) => println!("{id}:{key}"),
        None => println!("{key}"),
    }
    Ok(())
}
