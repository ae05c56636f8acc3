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
    std::process::ExitCode::from(exit as u8)
}
