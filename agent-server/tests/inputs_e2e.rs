//! Input files through the real `agent-server` binary on the real Docker engine: a multipart
//! `POST /schedule` with files and archives that a step reads byte-exact, the planner told which
//! files exist, bad uploads refused naming the problem (nothing stored, no job made), a queued
//! job's files kept across a restart, and whole directories in and out of a live sandbox as tar
//! and ZIP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use support::*;

/// Every byte value, a NUL in the middle of text, a lone 0xff: what text handling would break.
fn binary() -> Vec<u8> {
    let mut b: Vec<u8> = (0..=255u8).collect();
    b.extend_from_slice(b"text\0more\xff");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_header(kind: tar::EntryType, size: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(0o644);
    h
}

/// A tar of `(name, content)` files.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        b.append_data(
            &mut file_header(tar::EntryType::Regular, content.len()),
            name,
            *content,
        )
        .unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar with one link entry (`kind` Symlink or Link) named `name`.
fn tar_with_link(name: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut h = file_header(kind, 0);
    h.set_path(name).unwrap();
    h.set_link_name("/etc/passwd").unwrap();
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, std::io::empty()).unwrap();
    b.into_inner().unwrap()
}

/// A tar whose one entry has the raw name `name` (the tar crate refuses to write `..`).
fn tar_with_raw_name(name: &str) -> Vec<u8> {
    let mut h = file_header(tar::EntryType::Regular, 1);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn zip_of(build: impl FnOnce(&mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    build(&mut z);
    z.finish().unwrap().into_inner()
}

fn zip_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    zip_of(|z| {
        for (name, content) in files {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(content).unwrap();
        }
    })
}

/// A ZIP whose one entry is a character device (the zip crate writes only permissions, so the
/// file type is set in the central directory by hand).
fn zip_with_device(name: &str) -> Vec<u8> {
    let mut bytes = zip_of(|z| {
        z.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
    });
    let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[central + 38..central + 42].copy_from_slice(&(0o020_644u32 << 16).to_le_bytes());
    bytes
}

fn spec_part(spec: &Value) -> Part {
    Part::text(spec.to_string())
        .mime_str("application/json")
        .unwrap()
}

fn file_part(path: &str, content: &[u8]) -> Part {
    Part::bytes(content.to_vec()).file_name(path.to_string())
}

fn archive_part(content: Vec<u8>, media_type: &str) -> Part {
    Part::bytes(content)
        .file_name("inputs")
        .mime_str(media_type)
        .unwrap()
}

async fn post_form(server: &TestServer, form: Form) -> (u16, Value) {
    let resp = server
        .http
        .post(server.url("/schedule"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
    (status, v)
}

/// The files of the input directory of a server's output directory.
fn kept_inputs(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.output_dir.join("artifacts").join("inputs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A python step writing `{path: hex of its bytes}` for `paths` into `seen.json`.
fn hex_step(paths: &[&str]) -> Value {
    json!({"type": "python", "code": format!(
        "import json\npaths = {}\njson.dump({{p: open(p, 'rb').read().hex() for p in paths}}, open('seen.json', 'w'))",
        serde_json::to_string(paths).unwrap()
    )})
}

/// What [`hex_step`] saw, from the job's ZIP.
async fn seen(server: &TestServer, id: &str) -> Value {
    let mut zip = server.download(id).await;
    serde_json::from_str(&zip_file(&mut zip, "seen.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_files_and_archives_are_placed_byte_exact_before_the_first_step() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(&ServerOptions::new(&unique_scope("inputs")));
    let bin = binary();
    let paths = [
        "bin.dat",
        "dir/ünïcødé ✓.txt",
        "empty.txt",
        "t/a.txt",
        "t/deep/b.bin",
        "z/c.txt",
    ];
    let spec = json!({"steps": [hex_step(&paths)]});
    let form = Form::new()
        .part("spec", spec_part(&spec))
        .part("file", file_part("bin.dat", &bin))
        .part("file", file_part("dir/ünïcødé ✓.txt", "ünï\n".as_bytes()))
        .part("file", file_part("empty.txt", b""))
        .part(
            "archive",
            archive_part(
                gzip(&tar_of(&[
                    ("./t/a.txt", b"from tar\n"),
                    ("t/deep/b.bin", &bin),
                ])),
                "application/gzip",
            ),
        )
        // A ZIP told by its bytes alone.
        .part(
            "archive",
            archive_part(
                zip_files(&[("z/c.txt", b"from zip")]),
                "application/octet-stream",
            ),
        );
    let (code, v) = post_form(&server, form).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    let status = server.wait_final(&id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let seen = seen(&server, &id).await;
    let want: &[&[u8]] = &[
        &bin,
        "ünï\n".as_bytes(),
        b"",
        b"from tar\n",
        &bin,
        b"from zip",
    ];
    for (path, content) in paths.iter().zip(want) {
        assert_eq!(seen[*path], hex(content), "{path}: {seen}");
    }
    // The log says so; the kept copy is gone once the job has ended.
    assert!(
        server.logs_text(&id).await.contains("placed 6 input files"),
        "{}",
        server.logs_text(&id).await
    );
    assert!(
        kept_inputs(&server).is_empty(),
        "{:?}",
        kept_inputs(&server)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_is_told_which_input_files_exist() {
    require_docker();
    let plan = json!({"steps": [{"type": "shell", "command": "cat data/numbers.csv > shown.txt"}],
                      "summary": "show the data"});
    let llm = alchemyst_mock(&plan, &plan).await;
    let opts = ServerOptions::new(&unique_scope("inputs-plan")).llm(Some(&llm), None);
    let (_dir, server) = TestServer::in_tempdir(&opts);
    let csv = b"a,b\n1,2\n";
    let form = Form::new()
        .part("spec", spec_part(&json!({"prompt": "sum the numbers"})))
        .part("file", file_part("data/numbers.csv", csv));
    let (code, v) = post_form(&server, form).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    let status = server.wait_final(&id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    let mut zip = server.download(&id).await;
    assert_eq!(zip_file(&mut zip, "shown.txt"), "a,b\n1,2\n");
    let bodies = received_bodies(&llm).await;
    let prompt = request_text(&bodies[0]);
    assert!(
        prompt.contains("Input files already in /workspace")
            && prompt.contains("- data/numbers.csv (8 bytes)"),
        "{prompt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_naming_the_problem_and_leave_nothing() {
    require_docker();
    let opts = ServerOptions::new(&unique_scope("inputs-bad"))
        .env("AGENT_MAX_INPUT_FILE_BYTES", "1024")
        .env("AGENT_MAX_INPUT_ENTRIES", "5");
    let (_dir, server) = TestServer::in_tempdir(&opts);
    let spec = json!({"steps": [{"type": "shell", "command": "true"}]});
    let with = |(name, part): (&'static str, Part)| {
        Form::new().part("spec", spec_part(&spec)).part(name, part)
    };
    let tar = "application/x-tar";
    let many: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("f{i}"), vec![b'x'])).collect();
    let many: Vec<(&str, &[u8])> = many.iter().map(|(n, c)| (n.as_str(), &c[..])).collect();
    let cases: Vec<(&str, Form, u16, &str, &[&str])> = vec![
        (
            "../ in a file name",
            with(("file", file_part("../x", b"x"))),
            422,
            "file",
            &["\"../x\"", "'..'"],
        ),
        (
            "absolute file name",
            with(("file", file_part("/abs", b"x"))),
            422,
            "file",
            &["\"/abs\"", "absolute"],
        ),
        (
            "backslash",
            with(("file", file_part("a\\b", b"x"))),
            422,
            "file",
            &["backslash"],
        ),
        (
            "../ in a tar",
            with(("archive", archive_part(tar_with_raw_name("../up.txt"), tar))),
            422,
            "archive",
            &["\"../up.txt\"", "'..'"],
        ),
        (
            "symlink in a tar",
            with((
                "archive",
                archive_part(tar_with_link("ln", tar::EntryType::Symlink), tar),
            )),
            422,
            "archive",
            &["\"ln\"", "symbolic link"],
        ),
        (
            "hardlink in a tar",
            with((
                "archive",
                archive_part(tar_with_link("hard", tar::EntryType::Link), tar),
            )),
            422,
            "archive",
            &["\"hard\"", "hard link"],
        ),
        (
            "symlink in a ZIP",
            with((
                "archive",
                archive_part(
                    zip_of(|z| {
                        z.add_symlink(
                            "zl",
                            "/etc/passwd",
                            zip::write::SimpleFileOptions::default(),
                        )
                        .unwrap()
                    }),
                    "application/zip",
                ),
            )),
            422,
            "archive",
            &["\"zl\"", "symbolic link"],
        ),
        (
            "device in a ZIP",
            with((
                "archive",
                archive_part(zip_with_device("dev"), "application/zip"),
            )),
            422,
            "archive",
            &["\"dev\"", "character device"],
        ),
        (
            "absolute in a ZIP",
            with((
                "archive",
                archive_part(zip_files(&[("/etc/x", b"x")]), "application/zip"),
            )),
            422,
            "archive",
            &["\"/etc/x\"", "absolute"],
        ),
        (
            "oversize file",
            with(("file", file_part("big.bin", &[0u8; 1025]))),
            413,
            "file",
            &["\"big.bin\"", "1024"],
        ),
        (
            "oversize file in a tar",
            with((
                "archive",
                archive_part(tar_of(&[("big", &[1u8; 2000])]), tar),
            )),
            413,
            "archive",
            &["\"big\"", "1024"],
        ),
        (
            "too many entries",
            with(("archive", archive_part(tar_of(&many), tar))),
            413,
            "archive",
            &["more than 5 entries"],
        ),
        (
            "not an archive",
            with((
                "archive",
                archive_part(b"plain text".to_vec(), "text/plain"),
            )),
            415,
            "archive",
            &["not a ZIP, tar"],
        ),
        (
            "a bad spec part",
            Form::new().part("spec", spec_part(&json!({"steps": 1}))),
            422,
            "steps",
            &["spec"],
        ),
        (
            "a spec part that is not JSON",
            Form::new().part("spec", Part::text("{nope")),
            400,
            "spec",
            &["not valid JSON"],
        ),
        (
            "no spec part",
            Form::new().part("file", file_part("a.txt", b"a")),
            422,
            "spec",
            &["no `spec` part"],
        ),
        (
            "an unknown part",
            with(("other", Part::text("x"))),
            422,
            "other",
            &["unknown part"],
        ),
    ];
    for (what, form, code, field, words) in cases {
        let (got, v) = post_form(&server, form).await;
        assert_eq!(got, code, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        for w in words {
            assert!(message.contains(w), "{what}: {message:?} should say {w:?}");
        }
    }
    // Nothing was made: no job, no kept or staged files.
    let (_, jobs) = server.get_json("/jobs").await;
    assert_eq!(jobs["total"], 0, "{jobs}");
    assert!(
        kept_inputs(&server).is_empty(),
        "{:?}",
        kept_inputs(&server)
    );
    // The JSON body is unchanged: still limited to AGENT_MAX_BODY_BYTES, still 415 for text.
    let (code, v) = server
        .post_json("/schedule", &json!({"prompt": "x".repeat(2 << 20)}))
        .await;
    assert_eq!(code, 413, "{v}");
    let resp = server
        .http
        .post(server.url("/schedule"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    // A refused request with a body closes its connection, said so: the server may have left
    // the body unread (a client reusing the connection would send into a closed one).
    assert_eq!(resp.headers()["connection"], "close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_keeps_its_input_files_across_a_restart() {
    let opts =
        ServerOptions::new(&unique_scope("inputs-restart")).env("AGENT_MAX_CONCURRENT_JOBS", "1");
    let (_dir, mut server) = TestServer::docker_in_tempdir(&opts);
    let blocker = server.schedule(shell_job("sleep 120")).await;
    server
        .wait_for(&blocker, "running", |v| v["status"] == "running")
        .await;
    let bin = binary();
    let spec = json!({"steps": [hex_step(&["kept.bin"])]});
    let form = Form::new()
        .part("spec", spec_part(&spec))
        .part("file", file_part("kept.bin", &bin));
    let (code, v) = post_form(&server, form).await;
    assert_eq!(code, 202, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    assert_eq!(server.status(&id).await["status"], "queued");
    assert_eq!(kept_inputs(&server), [format!("{id}.tar")]);
    server.kill9();

    let server = server.restart();
    let status = server.wait_final(&id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(seen(&server, &id).await["kept.bin"], hex(&bin));
    assert_eq!(server.status(&blocker).await["status"], "interrupted");
    assert!(
        kept_inputs(&server).is_empty(),
        "{:?}",
        kept_inputs(&server)
    );
}

async fn create_sandbox(server: &TestServer) -> String {
    let (code, v) = server.post_json("/sandboxes", &json!({})).await;
    assert_eq!(code, 201, "{v}");
    v["sandbox_id"].as_str().unwrap().to_string()
}

async fn put_archive(
    server: &TestServer,
    id: &str,
    path: &str,
    body: Vec<u8>,
    media_type: &str,
) -> (u16, Value) {
    let resp = server
        .http
        .put(server.url(&format!("/sandboxes/{id}/archive")))
        .query(&[("path", path)])
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn get_archive(server: &TestServer, id: &str, path: &str, format: &str) -> Vec<u8> {
    let resp = server
        .get(&format!(
            "/sandboxes/{id}/archive?path={path}&format={format}"
        ))
        .await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

/// The regular files of a tar or ZIP, sorted by name.
fn files_of(bytes: &[u8], format: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if format == "zip" {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
        for i in 0..z.len() {
            let mut f = z.by_index(i).unwrap();
            if f.is_file() {
                let mut body = Vec::new();
                f.read_to_end(&mut body).unwrap();
                out.push((f.name().to_string(), body));
            }
        }
    } else {
        let mut t = tar::Archive::new(bytes);
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type().is_file() {
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                out.push((e.path().unwrap().display().to_string(), body));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_goes_into_a_sandbox_and_comes_back_byte_exact_as_tar_and_zip() {
    require_docker();
    let (_dir, server) = TestServer::in_tempdir(&ServerOptions::new(&unique_scope("inputs-dir")));
    let id = create_sandbox(&server).await;
    let bin = binary();
    let tree: Vec<(&str, &[u8])> = vec![
        ("a/b/c/deep.txt", b"deep\n"),
        ("a/bin.dat", &bin),
        ("empty", b""),
        ("ünï/cødé ✓.txt", "ünï".as_bytes()),
    ];
    let mut want: Vec<(String, Vec<u8>)> = tree
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_vec()))
        .collect();
    want.sort();
    for (format, body, media_type) in [
        ("tar", tar_of(&tree), "application/x-tar"),
        ("zip", zip_files(&tree), "application/zip"),
    ] {
        let dir = format!("up-{format}");
        let (code, v) = put_archive(&server, &id, &dir, body, media_type).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["path"], format!("/workspace/{dir}"));
        assert_eq!(v["files"], 4, "{v}");
        for back in ["tar", "zip"] {
            let got = files_of(&get_archive(&server, &id, &dir, back).await, back);
            assert_eq!(got, want, "{format} up, {back} down");
        }
    }
    // A step sees them where they were put.
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{id}/steps"),
            &json!({"step": {"type": "shell", "command": "cat up-tar/a/b/c/deep.txt up-zip/ünï/cødé\\ ✓.txt"}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"]["stdout_tail"], "deep\nünï", "{v}");

    // Refused uploads name the entry, and nothing of them is written (the whole archive is
    // checked first), in the workspace or outside it.
    let mut evil = tar_of(&[("ok.txt", b"ok")]);
    evil.truncate(evil.len() - 1024); // drop the end marker, then add the bad entry
    evil.extend(tar_with_raw_name("../escape.txt"));
    let (code, v) = put_archive(&server, &id, "bad", evil, "application/x-tar").await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"../escape.txt\""),
        "{v}"
    );
    let (code, v) = put_archive(
        &server,
        &id,
        "bad",
        tar_with_link("ln", tar::EntryType::Symlink),
        "application/x-tar",
    )
    .await;
    assert_eq!(code, 422, "{v}");
    let (code, v) = put_archive(
        &server,
        &id,
        "../x",
        tar_of(&[("a", b"a")]),
        "application/x-tar",
    )
    .await;
    assert_eq!(code, 422, "{v}");
    let (code, v) = server
        .post_json(
            &format!("/sandboxes/{id}/steps"),
            &json!({"step": {"type": "shell", "command": "test ! -e bad && test ! -e /escape.txt && test ! -e /workspace/../escape.txt && test ! -e /tmp/escape.txt"}}),
        )
        .await;
    assert_eq!(v["status"], "succeeded", "{code} {v}");
    // No such directory; a file is not one.
    let resp = server
        .get(&format!("/sandboxes/{id}/archive?path=nope"))
        .await;
    assert_eq!(resp.status(), 404);
    let resp = server
        .get(&format!("/sandboxes/{id}/archive?path=empty"))
        .await;
    assert_eq!(resp.status(), 404);
    let resp = server
        .get(&format!("/sandboxes/{id}/archive?format=rar"))
        .await;
    assert_eq!(resp.status(), 400);
    let resp = server.delete(&format!("/sandboxes/{id}")).await;
    assert_eq!(resp.status(), 200);
}
