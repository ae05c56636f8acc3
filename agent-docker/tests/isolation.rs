//! Hardening as seen from inside and from the engine; file confinement; the exported archive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_core::testing::{collect_bytes, tar_entries};
use agent_core::{Executor, JobId, JobSpec, Sandbox, SandboxErrorKind, SandboxSpec};
use bytes::Bytes;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_is_hardened() {
    if skipped() {
        return;
    }
    assert_hardened(config("hardening"))
        .await
        .shutdown()
        .await
        .unwrap();
}

/// The desktop image (Xvfb, VNC, Jupyter Lab) keeps every default: the same checks, and its
/// desktop and Jupyter start under them (non-root, no capabilities, read-only root, network none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_image_is_hardened_too_and_its_services_start_under_it() {
    if skipped() {
        return;
    }
    let image = std::env::var("AGENT_DESKTOP_IMAGE")
        .unwrap_or_else(|_| "containerized-agent-desktop:latest".to_string());
    let exec = assert_hardened(config("hardening-desktop").with_image(image)).await;
    let sb = sandbox(&exec, &JobSpec::from_prompt("x")).await;
    let script = r#"
agent-desktop &
for i in $(seq 200); do
  banner=$( (exec 3<>/dev/tcp/127.0.0.1/5900 && head -c 12 <&3) 2>/dev/null) && break
  sleep 0.05
done
echo "$banner"
(exec 3<>/dev/tcp/127.0.0.1/5901 && head -c 12 <&3)
xsetroot -solid '#123456' && echo xsetroot-ok
echo "home=$HOME"; test -w "$HOME" && echo home-writable
# Listening sockets on 5900/5901 (hex 170C/170D): all of them, and those on 127.0.0.1.
cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == "0A" && $2 ~ /:170[CD]$/' | wc -l
cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$4 == "0A" && $2 ~ /^0100007F:170[CD]$/' | wc -l
jupyter lab --version
kill %1
"#;
    let (r, out, err) = sh(&*sb, script).await;
    assert!(r.success(), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "RFB 003.008", "{out}\n{err}");
    assert_eq!(lines[1], "RFB 003.008", "the view-only server: {out}");
    assert_eq!(lines[2], "xsetroot-ok", "{out}\n{err}");
    assert_eq!(lines[3], "home=/tmp/home");
    assert_eq!(lines[4], "home-writable");
    // Both VNC servers listen, and only on 127.0.0.1 (0100007F).
    assert_eq!(lines[5], "2", "listening sockets on 5900/5901: {out}");
    assert_eq!(
        lines[6], "2",
        "every listener of 5900/5901 is on 127.0.0.1: {out}"
    );
    assert!(lines[7].starts_with('4'), "jupyter lab 4.x: {out}");
    finish(exec, &*sb).await;
}

/// The hardening checks, on a sandbox of `config`'s executor (returned for more checks).
async fn assert_hardened(config: agent_docker::DockerConfig) -> agent_docker::DockerExecutor {
    let exec = connect(config).await;
    let job = JobId::new();
    let sb = exec
        .create(&SandboxSpec::for_job(job, &JobSpec::from_prompt("x")))
        .await
        .unwrap();

    // From inside.
    let (r, out, _) = sh(
        &*sb,
        "grep -E '^(CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert!(r.success());
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let (_, out, _) = sh(&*sb, "id -u; id -g").await;
    assert_eq!(out, "1000\n1000\n", "runs as the non-root user");
    let (r, _, err) = sh(&*sb, "touch /etc/x").await;
    assert_ne!(r.exit_code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let (r, _, _) = sh(&*sb, "touch /usr/x || touch /x").await;
    assert_ne!(r.exit_code, 0);
    let (_, out, _) = sh(
        &*sb,
        "ls /sys/class/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    )
    .await;
    assert_eq!(out, "lo\nlo\n", "network none: only the loopback interface");
    let (_, out, _) = sh(
        &*sb,
        "ls -la /var/run/docker.sock /run/docker.sock 2>&1 | grep -c 'No such file'",
    )
    .await;
    assert_eq!(out.trim(), "2", "no Docker socket inside");
    let (_, out, _) = sh(&*sb, "ps -o pid=,comm= -p 1").await;
    assert!(
        out.contains("docker-init"),
        "an init process is PID 1: {out}"
    );
    let (_, out, _) = sh(
        &*sb,
        "ulimit -c; ulimit -n; mount | grep -E ' /(workspace|tmp) '",
    )
    .await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"));
    assert_eq!(lines.next(), Some("4096"));
    assert!(
        out.contains("/workspace type tmpfs") && out.contains("size=1048576k"),
        "{out}"
    );
    assert!(
        out.contains("/tmp type tmpfs") && out.contains("size=262144k"),
        "{out}"
    );
    let (r, _, _) = sh(&*sb, "touch /tmp/ok && touch /workspace/ok").await;
    assert!(r.success());

    // From the engine.
    let info = inspect(&exec, sb.id()).await;
    let hc = info.host_config.unwrap();
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(hc.memory, Some(2 << 30));
    assert_eq!(hc.memory_swap, hc.memory, "no swap beyond memory");
    assert_eq!(hc.nano_cpus, Some(1_000_000_000));
    assert_eq!(hc.pids_limit, Some(256));
    assert_eq!(hc.init, Some(true));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert!(hc
        .security_opt
        .unwrap()
        .iter()
        .any(|s| s.starts_with("no-new-privileges")));
    assert!(
        hc.binds.unwrap_or_default().is_empty(),
        "nothing from the host is mounted"
    );
    assert!(hc.mounts.unwrap_or_default().is_empty());
    let config = info.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    let labels = config.labels.unwrap();
    assert_eq!(
        labels.get("agent.managed").map(String::as_str),
        Some("true")
    );
    assert_eq!(labels.get("agent.job_id"), Some(&job.to_string()));
    assert_eq!(info.name.as_deref(), Some(format!("/agent-{job}").as_str()));

    sb.destroy().await.unwrap();
    let gone = exec
        .docker()
        .inspect_container(
            sb.id(),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    assert!(gone.is_err(), "destroy removes the container");
    exec
}

/// Writing `path` must be refused as a path outside the workspace; returns the error.
async fn put_refused(sb: &dyn Sandbox, path: &str) -> agent_core::SandboxError {
    let err = sb
        .put_file(path, Bytes::from_static(b"no"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, SandboxErrorKind::PathRefused, "{path:?}: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_confined_and_the_export_has_only_the_workspace() {
    let Some(exec) = docker(config("files")).await else {
        return;
    };
    let sb = sandbox(&exec, &JobSpec::from_prompt("x")).await;

    // Lexical refusals.
    for bad in [
        "../x",
        "/etc/x",
        "a/../../x",
        "/workspace/../etc/passwd",
        "",
    ] {
        put_refused(&*sb, bad).await;
        let err = sb.get_file(bad).await.unwrap_err();
        assert_eq!(err.kind, SandboxErrorKind::PathRefused, "{bad:?}: {err}");
    }

    // Links pointing out are refused, in the middle and at the end of a path.
    let (r, _, _) = sh(
        &*sb,
        "mkdir -p sub && ln -s /tmp tmplink && ln -s /etc etclink && ln -s /tmp/outside.txt outfile \
         && ln -s sub inlink && ln -s ../.. up && echo secret > /tmp/secret.txt",
    )
    .await;
    assert!(r.success());
    for bad in [
        "tmplink/x.txt",
        "etclink/x",
        "outfile",
        "up/etc/x",
        "tmplink/secret.txt",
    ] {
        let err = put_refused(&*sb, bad).await;
        assert!(err.to_string().contains("refused"), "{err}");
    }
    let err = sb.get_file("tmplink/secret.txt").await.unwrap_err();
    assert_eq!(err.kind, SandboxErrorKind::PathRefused);
    let (_, out, _) = sh(&*sb, "ls /tmp").await;
    assert!(
        !out.contains("x.txt") && !out.contains("outside.txt"),
        "{out}"
    );

    // Links that stay inside work; plain files round-trip; errors have kinds.
    sb.put_file("inlink/in.txt", Bytes::from_static(b"inside"))
        .await
        .unwrap();
    assert_eq!(&sb.get_file("sub/in.txt").await.unwrap()[..], b"inside");
    sb.put_file(
        "/workspace/deep/er/file.bin",
        Bytes::from(vec![0u8, 1, 2, 255]),
    )
    .await
    .unwrap();
    assert_eq!(
        &sb.get_file("deep/er/file.bin").await.unwrap()[..],
        &[0u8, 1, 2, 255]
    );
    assert_eq!(
        sb.get_file("missing.txt").await.unwrap_err().kind,
        SandboxErrorKind::NotFound
    );
    let (r, _, _) = sh(
        &*sb,
        "echo from-step > step.txt; mkdir -p out && echo r > out/result.txt",
    )
    .await;
    assert!(r.success());

    // The export: what the steps wrote, links as links, nothing from outside, no `..`.
    let tar_bytes = collect_bytes(sb.export().await.unwrap()).await;
    let entries = tar_entries(&tar_bytes);
    let names: Vec<&String> = entries.keys().collect();
    for want in [
        "step.txt",
        "out/result.txt",
        "sub/in.txt",
        "deep/er/file.bin",
        "tmplink",
        "etclink",
        "up",
    ] {
        assert!(entries.contains_key(want), "{want} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("secret")
            || n.contains("passwd")
            || n.starts_with("tmplink/")
            || n.starts_with("etclink/")),
        "{names:?}"
    );
    assert_eq!(entries["step.txt"].content, b"from-step\n");
    assert!(
        entries["tmplink"].kind.is_symlink(),
        "links are stored as links"
    );

    // And as the ZIP the job manager writes.
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("ws.zip");
    {
        let file = std::fs::File::create(&zip_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            zip.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::copy(&mut entry, &mut zip).unwrap();
        }
        zip.finish().unwrap();
    }
    let zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let zip_names: Vec<&str> = zip.file_names().collect();
    assert!(
        zip_names.contains(&"step.txt") && zip_names.contains(&"out/result.txt"),
        "{zip_names:?}"
    );

    finish(exec, &*sb).await;
}

/// A step can leave a FIFO (or another special file) where a file is read or written: the
/// supervisor must refuse it rather than block forever opening it (which would hang the job's
/// `compile` and every later file operation on that path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_refused_not_waited_on() {
    let Some(exec) = docker(config("fifo")).await else {
        return;
    };
    let sb = sandbox(&exec, &JobSpec::from_prompt("x")).await;
    let (r, _, _) = sh(&*sb, "mkfifo pipe && mkdir -p d && mkfifo d/pipe2").await;
    assert!(r.success());
    // A guard against a hang only: the answers come at once.
    let guard = Duration::from_secs(30);
    for path in ["pipe", "d/pipe2"] {
        let err = tokio::time::timeout(guard, sb.get_file(path))
            .await
            .expect("get_file answers")
            .unwrap_err();
        assert_eq!(err.kind, SandboxErrorKind::Invalid, "{path}: {err}");
        let err = tokio::time::timeout(guard, sb.put_file(path, Bytes::from_static(b"x")))
            .await
            .expect("put_file answers")
            .unwrap_err();
        assert_eq!(err.kind, SandboxErrorKind::Invalid, "{path}: {err}");
    }
    // Regular files still work, and the FIFO is still a FIFO (nothing replaced it).
    sb.put_file("d/plain.txt", Bytes::from_static(b"plain"))
        .await
        .unwrap();
    assert_eq!(&sb.get_file("d/plain.txt").await.unwrap()[..], b"plain");
    let (_, out, _) = sh(&*sb, "test -p pipe && echo fifo").await;
    assert_eq!(out, "fifo\n");
    finish(exec, &*sb).await;
}
