//! `agent`: run a job locally (`agent run --steps plan.json`), serve the API (`agent serve`), or
//! talk to a server (`submit`, `status`, `jobs`, `logs`, `cancel`, `download`). See `agent --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    agent_server::config::load_dotenv();
    let cli = match agent_server::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    let rt = match agent_server::server::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::from(5);
        }
    };
    let exit = rt.block_on(agent_server::cli::main(cli));
    // Not a plain drop: that waits for every blocking thread, and one may be parked in a read of
    // stdin that nothing can cancel (`agent mcp` ended by a signal while its client keeps the
    // pipe open). The work was awaited by now; give stragglers a moment, then go.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::ExitCode::from(exit as u8)
}
