//! intentd: command-line entry point.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "intentd", version, about = "Chinese intent recognition and auto-reply decisions for chat bots")]
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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::FetchModel(a) => cli::fetch_model::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Classify(a) => cli::classify::run(a),
    };
    if let Err(e) = result {
        // One line, with the chain of causes: scripts and people both read this.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
