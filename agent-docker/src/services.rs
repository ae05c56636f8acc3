//! The services a sandbox runs beside its steps: how each is started by the supervisor and where
//! it listens (all on the sandbox's loopback; the server reaches them through tunnels).
//!
//! - **desktop**: `agent-desktop` (in the desktop image, `images/desktop/agent-desktop`): Xvfb on
//!   [`DISPLAY`], a window manager and two x11vnc servers on 127.0.0.1, [`VNC_PORT`] (input) and
//!   [`VNC_VIEW_PORT`] (view only). Every step gets `DISPLAY`.
//! - **jupyter**: Jupyter Lab on `127.0.0.1:`[`JUPYTER_PORT`], working in `/workspace`, its base
//!   URL the server's proxy path ([`Service::base_path`]), with a random token that only the
//!   host knows (given in the service's environment, never on a command line or in a URL).

use std::collections::BTreeMap;
use std::time::Duration;

use agent_core::supervisor::Link;
use agent_core::{JobId, SandboxError, SecretString, Service, ServiceEndpoint};

/// The desktop's X display, set for every step of a sandbox with a desktop.
pub const DISPLAY: &str = ":0";
/// The desktop's VNC server that takes input.
pub const VNC_PORT: u16 = 5900;
/// The desktop's view-only VNC server.
pub const VNC_VIEW_PORT: u16 = 5901;
/// Jupyter Lab's port.
pub const JUPYTER_PORT: u16 = 8888;

/// What starting one service takes.
struct Launch {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    endpoint: ServiceEndpoint,
}

fn launch(service: Service, job: JobId, with_desktop: bool) -> Launch {
    let mut env = BTreeMap::new();
    if with_desktop {
        env.insert("DISPLAY".to_string(), DISPLAY.to_string());
    }
    match service {
        Service::Desktop => {
            env.insert("AGENT_VNC_PORT".into(), VNC_PORT.to_string());
            env.insert("AGENT_VNC_VIEW_PORT".into(), VNC_VIEW_PORT.to_string());
            Launch {
                argv: vec!["agent-desktop".into()],
                env,
                endpoint: ServiceEndpoint::new(service, vec![VNC_PORT, VNC_VIEW_PORT]),
            }
        }
        Service::Jupyter => {
            let token = SecretString::new(format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            ));
            env.insert("JUPYTER_TOKEN".into(), token.expose().to_string());
            // HOME and the runtime directories are on the /tmp tmpfs (the root is read-only).
            // Lab's own "notified about Jupyter news?" prompt is answered (no: the sandbox has
            // no network), unless the user's settings already say.
            let script = "mkdir -p \"${HOME:-/tmp/home}\" \"${JUPYTER_RUNTIME_DIR:-/tmp/runtime/jupyter}\" \
                 && s=\"${HOME:-/tmp/home}/.jupyter/lab/user-settings/@jupyterlab/apputils-extension\" \
                 && mkdir -p \"$s\" && { [ -e \"$s/notification.jupyterlab-settings\" ] \
                 || printf '{\"fetchNews\": \"false\", \"checkForUpdates\": false}' \
                 > \"$s/notification.jupyterlab-settings\"; } && exec \"$@\"";
            let mut argv: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
            argv.extend([
                "jupyter".to_string(),
                "lab".into(),
                "--no-browser".into(),
                "--ip=127.0.0.1".into(),
                format!("--port={JUPYTER_PORT}"),
                "--ServerApp.port_retries=0".into(),
                format!("--ServerApp.base_url={}", service.base_path(job)),
                "--ServerApp.root_dir=/workspace".into(),
                // The server in front checks who may come in; Jupyter checks its token,
                // which the server adds to every request. The browser's Host is the
                // server's, not localhost.
                "--ServerApp.allow_remote_access=True".into(),
                "--LabApp.news_url=".into(),
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate".into(),
            ]);
            Launch {
                argv,
                env,
                endpoint: ServiceEndpoint::new(service, vec![JUPYTER_PORT]).with_secret(token),
            }
        }
    }
}

/// Starts `services` in order through the sandbox's supervisor, each ready (listening) before
/// the next; returns their endpoints.
pub(crate) async fn start(
    link: &Link,
    job: JobId,
    services: &[Service],
    timeout: Duration,
) -> Result<Vec<ServiceEndpoint>, SandboxError> {
    let with_desktop = services.contains(&Service::Desktop);
    let mut endpoints = Vec::with_capacity(services.len());
    for &service in services {
        let Launch {
            argv,
            env,
            endpoint,
        } = launch(service, job, with_desktop);
        link.start_service(service.as_str(), argv, env, endpoint.ports.clone(), timeout)
            .await?;
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jupyter_gets_its_base_path_and_a_fresh_token_outside_its_command_line() {
        let job = JobId::new();
        let a = launch(Service::Jupyter, job, false);
        let b = launch(Service::Jupyter, job, false);
        let token = a.endpoint.secret.clone().unwrap();
        assert_eq!(token.expose().len(), 64);
        assert_ne!(Some(token.clone()), b.endpoint.secret);
        assert_eq!(
            a.env.get("JUPYTER_TOKEN").map(String::as_str),
            Some(token.expose())
        );
        assert!(a.argv.iter().all(|arg| !arg.contains(token.expose())));
        assert!(a
            .argv
            .contains(&format!("--ServerApp.base_url=/jupyter/{job}/")));
        assert!(!a.env.contains_key("DISPLAY"));
        assert_eq!(
            launch(Service::Jupyter, job, true)
                .env
                .get("DISPLAY")
                .map(String::as_str),
            Some(DISPLAY)
        );
    }

    #[test]
    fn the_desktop_declares_both_vnc_ports() {
        let d = launch(Service::Desktop, JobId::new(), true);
        assert_eq!(d.endpoint.ports, vec![VNC_PORT, VNC_VIEW_PORT]);
        assert!(d.endpoint.secret.is_none());
    }
}
