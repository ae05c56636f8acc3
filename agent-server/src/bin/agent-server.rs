//! `agent-server`: the containerized-agent REST server. Configuration: environment variables
//! (and `.env`), overridable by flags; see `agent-server --help`.

use clap::Parser;

/// The containerized-agent REST server.
#[derive(Parser)]
#[command(name = "agent-server", version, about)]
struct Args {
    #[command(flatten)]
    config: agent_server::ServerConfig,
}

fn main() -> std::process::ExitCode {
    agent_server::config::load_dotenv();
    let args = Args::parse();
    agent_server::config::init_tracing(args.config.log_format);
    let rt = match agent_server::server::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent_server::serve(args.config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent-server failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
