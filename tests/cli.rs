//! The `pocket` CLI as users run it, against a real local pocket: `get`
//! leaves nothing behind when it fails, errors print one line per cause,
//! `put -` reads standard input, `put` of several files and of a directory
//! prints `KEY  PATH` lines and does not send again what is stored, and no
//! progress bar reaches a pipe.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{counter, LocalPocket, UpOptions};
use pocket_proto::Key;
use pocket_transport::Role;

/// Runs `pocket ARGS --config CONFIG` with `stdin` as its standard input;
/// standard output and error are pipes.
fn run_pocket(config: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(common::POCKET)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pocket");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that does not read its input closes the pipe early.
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for pocket");
    writer.join().expect("stdin writer");
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file under `dir` (names relative to it) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        files.insert(name, std::fs::read(&path).expect("read file"));
    }
    files
}

/// Standard error holds no progress bar: no carriage return, no escape
/// sequence, no rate.
fn assert_no_bar(stderr: &str) {
    assert!(!stderr.contains('\r'), "a progress bar reached a pipe: {stderr:?}");
    assert!(!stderr.contains('\x1b'), "terminal escapes reached a pipe: {stderr:?}");
    assert!(!stderr.contains("iB/s") && !stderr.contains(" B/s"), "a transfer rate reached a pipe: {stderr:?}");
}

/// One line per cause: `error: ...` first, then `  caused by: ...` lines,
/// none of which repeats text the line before already holds.
fn assert_one_line_per_cause(stderr: &str) -> Vec<String> {
    let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
    assert!(!lines.is_empty(), "no error printed");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    let causes: Vec<&str> = lines.iter().map(|l| l.strip_prefix("error: ").or(l.strip_prefix("  caused by: ")).unwrap_or(l)).collect();
    for line in &lines[1..] {
        assert!(line.starts_with("  caused by: "), "{stderr}");
    }
    for pair in causes.windows(2) {
        assert!(!pair[0].contains(pair[1]), "a cause is printed twice: {stderr}");
    }
    // tonic's Debug and wordy code descriptions are not what users read.
    assert!(!stderr.contains("Some requested entity") && !stderr.contains("code: "), "{stderr}");
    lines
}

/// Waits until process `pid` has a handler for SIGINT (bit 1 of `SigCgt`
/// in /proc/PID/status), so a signal sent next is handled, not fatal.
async fn wait_until_catching_sigint(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        let caught = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0);
        if caught {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "pocket never handled SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PUTs the frontend has completed so far.
async fn frontend_puts(pocket: &LocalPocket) -> u64 {
    let metrics = common::metrics(&pocket.tls(Role::Operator, "admin"), &pocket.run_info("frontend").http).await;
    counter(&metrics, "pocket_frontend_puts_total")
}

/// `KEY  PATH` lines as printed by `put`, each checked against BLAKE3 of
/// the file it names.
fn assert_key_path_lines(stdout: &str, expected: &[&Path]) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, path) in lines.iter().zip(expected) {
        let (key, printed) = line.split_once("  ").unwrap_or_else(|| panic!("not `KEY  PATH`: {line:?}"));
        assert_eq!(Path::new(printed), *path, "{stdout}");
        let data = std::fs::read(path).expect("read input");
        assert_eq!(key, Key::of(&data).to_hex(), "{}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_transfers_behave_like_the_tools_users_know() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, extent_size: "40MiB", ..Default::default() }).await;
    let config = dir.join("client.toml");
    let run = |args: &[&str]| run_pocket(&config, args, b"");

    // --- get: nothing is left behind on failure, nothing else is touched.
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("out dir");
    std::fs::write(out.join("blob.tmp"), b"a file the user keeps").expect("write");
    std::fs::write(out.join("other.txt"), b"another").expect("write");
    let before = snapshot(&out);
    let missing = Key::of(b"stored nowhere").to_hex();
    let target = out.join("blob");
    let get = run(&["get", &missing, "-o", target.to_str().expect("utf-8")]);
    assert_eq!(get.status.code(), Some(1), "{}", text(&get.stderr));
    assert_eq!(snapshot(&out), before, "a failed get changed the output directory");
    // One line per cause, the status named shortly, its text once.
    let stderr = text(&get.stderr);
    let lines = assert_one_line_per_cause(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(lines[0], format!("error: get {missing}"));
    let cause = lines[1].strip_prefix("  caused by: not found: ").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
    assert!(get.stdout.is_empty());

    // A get that succeeds writes the file and touches nothing else.
    let blob: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let (key, _) = pocket.client.put(blob.clone().into()).await.expect("put");
    let get = run(&["get", &key.to_hex(), "-o", target.to_str().expect("utf-8")]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    let mut expected = before.clone();
    expected.insert("blob".to_string(), blob.clone());
    assert_eq!(snapshot(&out), expected, "get touched a file it was not asked to write");
    assert_no_bar(&text(&get.stderr));
    // Over an existing file, and quietly.
    let get = run(&["get", "-q", &key.to_hex(), "-o", target.to_str().expect("utf-8")]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert!(get.stderr.is_empty(), "{}", text(&get.stderr));
    assert_eq!(snapshot(&out), expected);

    // An unreachable frontend: still one line per cause.
    let unreachable_config = tmp.path().join("unreachable.toml");
    let config_text = std::fs::read_to_string(&config).expect("read client.toml");
    let frontend = &pocket.client_config.frontend;
    std::fs::write(&unreachable_config, config_text.replace(frontend.as_str(), "127.0.0.1:1")).expect("write config");
    let get = run_pocket(&unreachable_config, &["get", &key.to_hex(), "-o", target.to_str().expect("utf-8")], b"");
    assert_eq!(get.status.code(), Some(1));
    let stderr = text(&get.stderr);
    let lines = assert_one_line_per_cause(&stderr);
    assert_eq!(lines[0], format!("error: get {key}"));
    assert!(lines[1].starts_with("  caused by: unavailable"), "{stderr}");
    assert_eq!(snapshot(&out), expected);

    // --- put -: standard input, slowly, so the transfer lasts over a
    // second (a terminal would show a bar; this pipe must not).
    let piped: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = Command::new(common::POCKET)
        .args(["put", "-", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pocket put -");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(&piped[..300_000]).expect("write stdin");
    std::thread::sleep(Duration::from_millis(1500));
    input.write_all(&piped[300_000..]).expect("write stdin");
    drop(input);
    let put = child.wait_with_output().expect("wait for put -");
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert_eq!(text(&put.stdout), format!("{}\n", Key::of(&piped).to_hex()), "put - prints the bare key");
    assert_no_bar(&text(&put.stderr));
    assert!(put.stderr.is_empty(), "{}", text(&put.stderr));
    let get = run(&["get", &Key::of(&piped).to_hex()]);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert!(get.stdout == piped, "get to standard output returns what put - stored");
    // On a terminal (a pty, from util-linux `script`) a transfer that lasts
    // over a second does show its bar, on standard error; --quiet hides it.
    let slow = tmp.path().join("slow.bin");
    std::fs::write(&slow, &piped[..500_000]).expect("write");
    let on_terminal = |flags: &str| {
        let command = format!("(sleep 1.5; cat '{}') | '{}' put {flags} - --config '{}'", slow.display(), common::POCKET, config.display());
        let output = Command::new("script").args(["-qefc", &command, "/dev/null"]).stdin(Stdio::null()).output().expect("run script");
        assert!(output.status.success(), "{}{}", text(&output.stdout), text(&output.stderr));
        text(&output.stdout)
    };
    let transcript = on_terminal("");
    assert!(transcript.contains("reading standard input") && transcript.contains("B/s"), "no bar on a terminal: {transcript:?}");
    assert!(transcript.contains(&Key::of(&piped[..500_000]).to_hex()), "{transcript:?}");
    let transcript = on_terminal("--quiet");
    assert_eq!(transcript.trim(), Key::of(&piped[..500_000]).to_hex(), "--quiet prints the key alone");

    // Interrupted (SIGINT) while waiting for standard input: it says so,
    // prints no key and exits 130.
    let mut child = Command::new(common::POCKET)
        .args(["put", "-", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pocket put -");
    let input = child.stdin.take().expect("stdin");
    wait_until_catching_sigint(child.id()).await;
    common::signal(child.id(), libc::SIGINT);
    let put = child.wait_with_output().expect("wait for put -");
    drop(input);
    assert_eq!(put.status.code(), Some(130), "{}", text(&put.stderr));
    assert_eq!(text(&put.stderr), "error: interrupted\n");
    assert!(put.stdout.is_empty());

    // Standard input beyond the blob maximum is refused, clearly.
    let too_big = vec![7u8; (pocket_proto::DEFAULT_MAX_BLOB_SIZE_BYTES + 1) as usize];
    let put = run_pocket(&config, &["put", "-"], &too_big);
    assert_eq!(put.status.code(), Some(1));
    assert!(put.stdout.is_empty());
    let stderr = text(&put.stderr);
    assert_one_line_per_cause(&stderr);
    assert!(stderr.contains("larger than 32 MiB"), "{stderr}");

    // --- put of files and of a directory tree.
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub").join("deeper")).expect("tree");
    let a = tree.join("a.txt");
    let b = tree.join("sub").join("b.bin");
    let c = tree.join("sub").join("deeper").join("c.empty");
    std::fs::write(&a, b"the first file of the tree\n").expect("write");
    std::fs::write(&b, (0..3_200_000u32).map(|i| (i % 241) as u8).collect::<Vec<u8>>()).expect("write");
    std::fs::write(&c, b"").expect("write");
    std::os::unix::fs::symlink(&a, tree.join("sub").join("link")).expect("symlink");
    // A symbolic link back up the tree: followed, it would loop.
    std::os::unix::fs::symlink(&tree, tree.join("sub").join("deeper").join("up")).expect("symlink");
    let tree_arg = tree.to_str().expect("utf-8");

    // A directory without -r is refused; the other arguments still go.
    let put = run(&["put", tree_arg, a.to_str().expect("utf-8")]);
    assert_eq!(put.status.code(), Some(1), "{}", text(&put.stderr));
    let stderr = text(&put.stderr);
    assert!(stderr.contains(&format!("error: {tree_arg}: is a directory")) && stderr.contains("--recursive"), "{stderr}");
    assert_key_path_lines(&text(&put.stdout), &[&a]);
    assert!(stderr.contains("2 files: 1 uploaded, 0 already stored, 1 failed"), "{stderr}");

    let puts_before = frontend_puts(&pocket).await;
    let put = run(&["put", "-r", tree_arg]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    // Each directory's files in name order, then its subdirectories.
    assert_key_path_lines(&text(&put.stdout), &[&a, &b, &c]);
    let stderr = text(&put.stderr);
    assert!(stderr.contains("3 files: 2 uploaded, 1 already stored"), "{stderr}");
    assert!(stderr.contains(&format!("note: skipped {} (symbolic link)", tree.join("sub").join("link").display())), "{stderr}");
    assert_no_bar(&stderr);
    assert_eq!(frontend_puts(&pocket).await, puts_before + 2, "a.txt was stored already");

    // Again: every file is stored already, and nothing is sent.
    let again = run(&["put", "--recursive", "--concurrency", "2", tree_arg]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(again.stdout, put.stdout, "the same lines");
    assert!(text(&again.stderr).contains("3 files: 0 uploaded, 3 already stored"), "{}", text(&again.stderr));
    assert_eq!(frontend_puts(&pocket).await, puts_before + 2, "a second run uploaded something");

    // Quiet: the lines, and nothing on standard error.
    let quiet = run(&["put", "-q", "-r", tree_arg]);
    assert!(quiet.status.success());
    assert_eq!(quiet.stdout, put.stdout);
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));

    // Several files, one of them missing: the others are stored, the
    // missing one reported, and the exit status is 1.
    let d = tmp.path().join("d.txt");
    std::fs::write(&d, b"a file outside the tree").expect("write");
    let nowhere = tmp.path().join("nowhere.txt");
    let put = run(&["put", b.to_str().expect("utf-8"), nowhere.to_str().expect("utf-8"), d.to_str().expect("utf-8")]);
    assert_eq!(put.status.code(), Some(1));
    assert_key_path_lines(&text(&put.stdout), &[&b, &d]);
    let stderr = text(&put.stderr);
    assert!(stderr.contains(&format!("error: {}: ", nowhere.display())), "{stderr}");
    assert!(stderr.contains("3 files: 1 uploaded, 1 already stored, 1 failed"), "{stderr}");

    // The stored tree reads back, the empty file as an empty file.
    for (path, name) in [(&b, "b.bin"), (&c, "c.empty")] {
        let data = std::fs::read(path).expect("read input");
        let copy = out.join(name);
        let get = run(&["get", &Key::of(&data).to_hex(), "-o", copy.to_str().expect("utf-8")]);
        assert!(get.status.success(), "{}", text(&get.stderr));
        assert!(std::fs::read(&copy).expect("read copy") == data, "{name}");
    }
    // A single file still prints its bare key, as scripts expect.
    let put = run(&["put", d.to_str().expect("utf-8")]);
    assert!(put.status.success());
    assert_eq!(text(&put.stdout), format!("{}\n", Key::of(b"a file outside the tree").to_hex()));
    // A concurrency of 0 is refused by the argument parser.
    let put = run(&["put", "--concurrency", "0", d.to_str().expect("utf-8")]);
    assert_eq!(put.status.code(), Some(2), "{}", text(&put.stderr));
    pocket.stop().await;
}
