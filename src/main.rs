//! intentd: command-line entry point.

mod cli;
mod tools;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "intentd",
    version,
    about = "Chinese intent recognition and auto-reply decisions for chat bots"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    FetchModel(cli::fetch_model::FetchModelArgs),
    Train(cli::train::TrainArgs),
    Eval(cli::eval::EvalArgs),
    Classify(cli::classify::ClassifyArgs),
    Calibrate(cli::calibrate::CalibrateArgs),
    Serve(cli::serve::ServeArgs),
    Keygen(cli::keygen::KeygenArgs),
    Export(cli::export::ExportArgs),
    Stats(cli::stats::StatsArgs),
    /// Checks on labelled training data (`data check`: suspect labels).
    Data(cli::data::DataArgs),
    /// Load generator: N concurrent clients or a fixed rate against a running server.
    Bench(tools::loadgen::LoadgenArgs),
}

fn main() {
    // Before any thread exists: big tensors from a heap that is kept, not fresh mmaps.
    intentd::model::allocator::tune_for_tensors();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::FetchModel(a) => cli::fetch_model::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Calibrate(a) => cli::calibrate::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Keygen(a) => cli::keygen::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Stats(a) => cli::stats::run(a),
        Command::Data(a) => cli::data::run(a),
        Command::Bench(a) => a
            .runtime()
            .and_then(|rt| rt.block_on(tools::loadgen::run(a)).map(|_| ())),
    };
    if let Err(e) = result {
        // One line, with the chain of causes: scripts and people both read this.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Structured logs on stderr; `RUST_LOG` filters (default info), `INTENTD_LOG_FORMAT=json` for
/// machine-readable lines. Message text is never logged at info level.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("INTENTD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
