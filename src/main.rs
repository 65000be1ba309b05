//! `pdq`: one binary for the whole system. Each subcommand is a thin shell over a library crate;
//! errors end as one line on stderr and a non-zero exit.

mod api;
mod bench;
mod cli;
mod commands;
mod demo;
mod shutdown;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // lapin logs every channel or connection close at error level, including the ones pdq
    // reports itself; its errors reach the user through pdq's own messages instead.
    let default_filter = "warn,lapin=off,pdq=info,pdq_workers=info";
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr);
    match args.global.log_format {
        cli::LogFormat::Text => logs.init(),
        // The current span's fields flattened beside the event's, so one line names the request.
        cli::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pdq: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pdq: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already quoted
/// (lapin's and sqlx's errors include their sources in their own messages).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
