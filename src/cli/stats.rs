use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use intentd::config::ServerConfig;
use intentd::engine::catalog::Catalog;
use intentd::pb;
use intentd::policy::config::OperatorConfig;
use intentd::server::convert;
use intentd::store::stats::StatsQuery;

/// Response / resolution / conversion / satisfaction / human share, and A/B reports, from the
/// store (the same figures as the GetStats RPC).
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[arg(long, default_value = "config/intentd.yml")]
    pub config: PathBuf,
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[arg(long, default_value = "demo")]
    pub bot: String,
    #[arg(long, default_value = "")]
    pub chat: String,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, default_value = "")]
    pub experiment: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn rates_line(key: &str, r: &pb::Rates) -> String {
    format!(
        "{key:<28} msgs {:>6}  response {:>6.1}%  resolution {:>6.1}%  conversion {:>6.1}%  satisfaction {:>+6.2}  human {:>5.1}% (target {:.0}%)",
        r.messages,
        r.response_rate * 100.0,
        r.resolution_rate * 100.0,
        r.conversion_rate * 100.0,
        r.satisfaction,
        r.human_share * 100.0,
        r.human_share_target * 100.0
    )
}

pub fn run(args: StatsArgs) -> Result<()> {
    let from_ms = args
        .from
        .as_deref()
        .map(|s| super::export::parse_time(s, "--from"))
        .transpose()?
        .unwrap_or(0);
    let to_ms = args
        .to
        .as_deref()
        .map(|s| super::export::parse_time(s, "--to"))
        .transpose()?
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    // The human-share targets come from the playbook, as in GetStats.
    let server = ServerConfig::load(&args.config)?;
    let catalog = Catalog::load(&server.operator_dir.join("intents.yml"))?;
    let operator = OperatorConfig::load(&server.operator_dir, &catalog)?;
    let storage = super::export::open_storage(&args.config, args.db)?;
    let report = storage
        .stats(
            &StatsQuery {
                bot_id: args.bot.clone(),
                chat_id: args.chat,
                from_ms,
                to_ms,
                experiment: args.experiment,
            },
            &|chat: &str| {
                operator
                    .settings(&args.bot, chat)
                    .handoff
                    .human_share_target
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    storage.shutdown();
    // The same shape as the GetStats answer.
    let s = convert::stats_response(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if let Some(t) = &s.total {
        println!("{}", rates_line(&format!("bot {}", args.bot), t));
    }
    for (title, rows) in [
        ("by group", &s.by_chat),
        ("by intent", &s.by_intent),
        ("by variant", &s.by_variant),
    ] {
        if rows.is_empty() {
            continue;
        }
        println!("\n{title}:");
        for g in rows {
            if let Some(r) = &g.rates {
                println!("  {}", rates_line(&g.key, r));
            }
        }
    }
    for e in &s.experiments {
        println!(
            "\nexperiment {} (chi-square {:.3}, p = {:.4}{})",
            e.experiment,
            e.chi_square,
            e.p_value,
            if e.significant { ", significant" } else { "" }
        );
        for v in &e.variants {
            println!(
                "  {:<24} exposures {:>7}  conversions {:>6}  rate {:>6.2}%",
                v.variant_id,
                v.exposures,
                v.conversions,
                v.rate * 100.0
            );
        }
        if !e.winner.is_empty() {
            println!("  winner: {}", e.winner);
        }
        if !e.warning.is_empty() {
            println!("  warning: {}", e.warning);
        }
    }
    Ok(())
}
