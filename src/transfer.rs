//! The CLI's transfers: `pocket put` of files, directories and standard
//! input, `pocket get` to a file or standard output, their progress bars,
//! and how a failure is printed (one line per cause).
//!
//! `put` hashes each input locally first, asks the frontend which keys it
//! already holds ([`EXISTS_BATCH_KEYS`] at a time), uploads only the rest
//! (`--concurrency` at once, each streamed from its file) and prints
//! `KEY  PATH` lines in input order, as `b3sum` and `sha256sum` do. A file
//! that fails is reported and the others carry on. Memory stays bounded:
//! file contents are only ever streamed in chunks (never a whole tree's,
//! nor a whole file's); what is held is each file's path and length, and
//! the keys of one batch. Standard input, which cannot be read twice, is
//! held in memory up to [`STDIN_MAX_BYTES`] and refused above that (rather
//! than spilled to a temporary file).

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pocket_client::{Client, OnProgress};
use pocket_proto::Key;

/// Most bytes `pocket put -` reads from standard input: the default blob
/// maximum, as the input is held in memory (it is hashed before it is sent,
/// and a pipe cannot be read twice). A server configured for larger blobs
/// still takes them from files.
pub const STDIN_MAX_BYTES: u64 = pocket_proto::DEFAULT_MAX_BLOB_SIZE_BYTES;

/// Keys per `Exists` call: a tenth of the frontend's default limit
/// (10,000), so a call stays small, yet a big tree needs few round trips.
pub const EXISTS_BATCH_KEYS: usize = 1000;

/// Files hashed and uploaded at once by default: enough to overlap one
/// file's round trips with another's bytes, few enough that a laptop's
/// uplink and the frontend's per-client budget are not swamped.
pub const DEFAULT_PUT_CONCURRENCY: usize = 4;

/// Upper bound of `--concurrency`: each upload holds an open file and a
/// few 1 MiB chunks in flight.
pub const MAX_PUT_CONCURRENCY: usize = 64;

/// A transfer shorter than this shows no progress bar at all: a bar that
/// flashes for a few milliseconds is noise.
const SHOW_PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// How often a visible bar redraws (its rate and ETA move on their own).
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// The process was interrupted (SIGINT or SIGTERM) during a transfer; what
/// it had started was undone (see [`Client::get_to_file`]).
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl Error for Interrupted {}

/// Runs `work` until it ends or the process gets SIGINT or SIGTERM. On a
/// signal `work` is dropped first (a download's temporary file is removed
/// when its future is dropped), then [`Interrupted`] is returned.
pub async fn interruptible<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listen for SIGTERM")?;
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
        _ = terminate.recv() => Err(Interrupted.into()),
    }
}

/// An error as lines, one per cause: the error's own text, then each cause
/// whose text the line before does not already contain (a wrapper that
/// prints its cause inside its own message is not repeated).
pub fn cause_lines<'a>(error: &'a (dyn Error + 'static)) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut next: Option<&'a (dyn Error + 'static)> = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !lines.last().is_some_and(|previous| previous.contains(&text)) {
            lines.push(text);
        }
        next = cause.source();
    }
    lines
}

/// `error: LINE` and `  caused by: LINE` for each further cause.
pub fn render_error(error: &anyhow::Error) -> String {
    render_lines(None, &cause_lines(error.as_ref()))
}

fn render_lines(subject: Option<&str>, lines: &[String]) -> String {
    let mut text = String::new();
    for (index, line) in lines.iter().enumerate() {
        match (index, subject) {
            (0, Some(subject)) => text.push_str(&format!("error: {subject}: {line}\n")),
            (0, None) => text.push_str(&format!("error: {line}\n")),
            _ => text.push_str(&format!("  caused by: {line}\n")),
        }
    }
    text
}

/// Whether a transfer may draw a progress bar: standard error is a terminal
/// and `--quiet` was not given.
pub fn progress_wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A progress bar on standard error that stays hidden for the first
/// [`SHOW_PROGRESS_AFTER`] and never shows unless it was `wanted`; cleared
/// when dropped.
pub struct Progress {
    bar: ProgressBar,
    reveal: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A bar in `template` (indicatif's syntax). Must be called inside the
    /// tokio runtime.
    pub fn new(wanted: bool, template: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(ProgressStyle::with_template(template).expect("valid progress template").progress_chars("=> "));
        let reveal = wanted.then(|| {
            let bar = bar.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SHOW_PROGRESS_AFTER).await;
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar.enable_steady_tick(PROGRESS_TICK);
            })
        });
        Progress { bar, reveal }
    }

    /// A bar for one blob: bytes, total, rate and ETA.
    pub fn for_blob(wanted: bool) -> Progress {
        Progress::new(wanted, "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta} {msg}")
    }

    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// A client callback that moves this bar by each chunk and takes the
    /// blob's length as the bar's length.
    pub fn on_blob_progress(&self) -> OnProgress {
        let bar = self.bar.clone();
        Arc::new(move |chunk_bytes, blob_length_bytes| {
            if bar.length() != Some(blob_length_bytes) {
                bar.set_length(blob_length_bytes);
            }
            bar.inc(chunk_bytes);
        })
    }

    /// Runs `print` with the bar out of the way (it is redrawn after).
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.bar.suspend(print)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(reveal) = self.reveal.take() {
            reveal.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// `pocket get KEY [-o PATH]`: the blob, checked against its key, to `output`
/// (see [`Client::get_to_file`]: nothing is left behind on failure) or, with
/// no path or `-`, to standard output once it has been checked whole.
pub async fn get(client: &Client, key: &Key, output: Option<&Path>, quiet: bool) -> anyhow::Result<()> {
    let progress = Progress::for_blob(progress_wanted(quiet));
    match output {
        Some(path) if path != Path::new("-") => {
            client.get_to_file_with_progress(key, path, Some(progress.on_blob_progress())).await?;
        }
        _ => {
            let data = client.get_with_progress(key, Some(progress.on_blob_progress())).await?;
            drop(progress);
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&data).context("write to standard output")?;
            stdout.flush().context("write to standard output")?;
        }
    }
    Ok(())
}

/// How `pocket put` runs.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Store the regular files under directories given; without it a
    /// directory is an error.
    pub recursive: bool,
    /// Files hashed, and files uploaded, at once.
    pub concurrency: usize,
    /// No progress bar, notes or summary; errors are still printed.
    pub quiet: bool,
}

/// What a `pocket put` did, file by file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// Inputs: the files found, standard input, and arguments that could
    /// not be read (counted as failed).
    pub files: u64,
    /// Sent to the frontend.
    pub uploaded: u64,
    /// Not sent: the frontend already held their keys.
    pub already_stored: u64,
    /// Inputs that failed (each reported on standard error), including
    /// arguments that could not be read or were directories without -r.
    pub failed: u64,
}

/// One thing to store.
#[derive(Debug)]
enum Source {
    Stdin,
    /// A regular file and its length when it was found.
    File { path: PathBuf, length_bytes: u64 },
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::Stdin => "-".to_string(),
            Source::File { path, .. } => path.display().to_string(),
        }
    }
}

/// The inputs of a `put`, expanded; what could not be expanded is reported.
struct Inputs {
    sources: Vec<Source>,
    failed: u64,
}

/// Where one input of a `put` stands.
enum Outcome {
    /// Hashed, not yet known to the frontend: to be sent.
    ToSend(Key),
    Uploaded(Key),
    AlreadyStored(Key),
    Failed(anyhow::Error),
}

/// `pocket put PATH...`. One plain input (a file or `-`) prints its bare
/// key (as `pocket put` always has); several, or a directory, print
/// `KEY  PATH` lines, then a summary line on standard error (unless quiet)
/// such as `3 files: 1 uploaded, 2 already stored`. Failures are printed as
/// they are met; the caller exits 1 if [`PutSummary::failed`] is not zero.
/// An error returned (the frontend not answering `Exists`) ends the run.
pub async fn put(client: &Client, paths: &[PathBuf], options: &PutOptions) -> anyhow::Result<PutSummary> {
    let concurrency = options.concurrency.clamp(1, MAX_PUT_CONCURRENCY);
    let bare = paths.len() == 1 && (paths[0] == Path::new("-") || !paths[0].is_dir());
    let wanted = progress_wanted(options.quiet);
    let mut inputs = expand(paths, options);
    // Arguments that could not be read count as failed files, so that
    // uploaded + already stored + failed = files.
    let files = inputs.sources.len() as u64 + inputs.failed;
    let mut summary = PutSummary { files, failed: inputs.failed, ..PutSummary::default() };

    let mut stdin = None;
    if inputs.sources.iter().any(|source| matches!(source, Source::Stdin)) {
        match read_stdin(wanted).await {
            Ok(data) => stdin = Some(data),
            Err(e) => {
                eprint!("{}", render_lines(Some("-"), &cause_lines(e.as_ref())));
                summary.failed += 1;
                inputs.sources.retain(|source| !matches!(source, Source::Stdin));
            }
        }
    }
    let length_of = |source: &Source| match source {
        Source::Stdin => stdin.as_ref().map_or(0, |data| data.len() as u64),
        Source::File { length_bytes, .. } => *length_bytes,
    };
    let total_bytes: u64 = inputs.sources.iter().map(length_of).sum();
    let files_total = inputs.sources.len();

    let progress = match bare {
        true => Progress::for_blob(wanted),
        false => Progress::new(wanted, "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta} {msg}"),
    };
    let bar = progress.bar().clone();
    bar.set_length(total_bytes);
    let on_progress: OnProgress = {
        let bar = bar.clone();
        Arc::new(move |chunk_bytes, _| bar.inc(chunk_bytes))
    };
    let mut done_files = 0usize;

    for batch in inputs.sources.chunks(EXISTS_BATCH_KEYS) {
        bar.set_message(format!("{done_files}/{files_total} files, hashing"));
        // Hash the batch, `concurrency` files at once, kept in order.
        let hashed: Vec<Result<Key, pocket_client::ClientError>> = futures::stream::iter(batch)
            .map(|source| {
                let stdin = stdin.clone();
                async move {
                    match (source, stdin) {
                        (Source::File { path, .. }, _) => Ok(pocket_client::hash_file(path).await?.0),
                        (Source::Stdin, Some(data)) => Ok(Key::of(&data)),
                        (Source::Stdin, None) => unreachable!("standard input that was not read is not an input"),
                    }
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        let keys: Vec<Key> = hashed.iter().filter_map(|key| key.as_ref().ok().copied()).collect();
        let present = match keys.is_empty() {
            true => Vec::new(),
            false => client.exists(&keys).await.context("ask the frontend which files it already holds")?,
        };
        if present.len() != keys.len() {
            bail!("the frontend answered Exists for {} keys with {} answers", keys.len(), present.len());
        }
        let mut present = present.into_iter();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        for (source, key) in batch.iter().zip(hashed) {
            outcomes.push(match key {
                Err(e) => Outcome::Failed(e.into()),
                // One answer per key sent, checked above.
                Ok(key) if present.next() == Some(true) => {
                    bar.inc(length_of(source));
                    Outcome::AlreadyStored(key)
                }
                Ok(key) => Outcome::ToSend(key),
            });
        }
        done_files += outcomes.iter().filter(|outcome| !matches!(outcome, Outcome::ToSend(_))).count();
        bar.set_message(format!("{done_files}/{files_total} files"));

        // Upload what is missing, `concurrency` at once, in any order.
        let to_send: Vec<(usize, Key)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(index, outcome)| match outcome {
                Outcome::ToSend(key) => Some((index, *key)),
                _ => None,
            })
            .collect();
        let mut uploads = futures::stream::iter(to_send)
            .map(|(index, key)| {
                let (source, on_progress, stdin) = (&batch[index], on_progress.clone(), stdin.clone());
                async move {
                    let sent = match (source, stdin) {
                        (Source::File { path, .. }, _) => client.put_file_as(&key, path, Some(on_progress)).await,
                        (Source::Stdin, Some(data)) => client.put_with_progress(data, Some(on_progress)).await.map(|_| true),
                        (Source::Stdin, None) => unreachable!("standard input that was not read is not an input"),
                    };
                    (index, key, sent)
                }
            })
            .buffer_unordered(concurrency);
        while let Some((index, key, sent)) = uploads.next().await {
            outcomes[index] = match sent {
                Ok(_created) => Outcome::Uploaded(key),
                Err(e) => Outcome::Failed(e.into()),
            };
            done_files += 1;
            bar.set_message(format!("{done_files}/{files_total} files"));
        }
        drop(uploads);

        // Report the batch in input order.
        for (source, outcome) in batch.iter().zip(outcomes) {
            let label = source.label();
            match &outcome {
                Outcome::Uploaded(_) => summary.uploaded += 1,
                Outcome::AlreadyStored(_) => summary.already_stored += 1,
                Outcome::ToSend(_) | Outcome::Failed(_) => summary.failed += 1,
            }
            // A closed standard output (`| head`) ends the run with an
            // error rather than a panic in println!.
            progress
                .suspend(|| match outcome {
                    Outcome::Uploaded(key) | Outcome::AlreadyStored(key) if bare => writeln!(std::io::stdout(), "{key}"),
                    Outcome::Uploaded(key) | Outcome::AlreadyStored(key) => writeln!(std::io::stdout(), "{key}  {label}"),
                    Outcome::ToSend(_) => unreachable!("every upload of the batch has ended"),
                    Outcome::Failed(e) => {
                        eprint!("{}", render_lines(Some(&label), &cause_lines(e.as_ref())));
                        Ok(())
                    }
                })
                .context("write to standard output")?;
        }
    }
    drop(progress);
    if !bare && !options.quiet {
        let failed = match summary.failed {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        let noun = if summary.files == 1 { "file" } else { "files" };
        eprintln!("{} {noun}: {} uploaded, {} already stored{failed}", summary.files, summary.uploaded, summary.already_stored);
    }
    Ok(summary)
}

/// Standard input, whole, refused above [`STDIN_MAX_BYTES`]. Reading it
/// shows bytes and rate (its length is unknown) if it lasts. Read through
/// tokio so that an interrupt is not stuck behind a blocking read.
async fn read_stdin(wanted: bool) -> anyhow::Result<Bytes> {
    use tokio::io::AsyncReadExt;
    let progress = Progress::new(wanted, "reading standard input: {bytes} {bytes_per_sec}");
    let mut data = Vec::new();
    let mut stdin = tokio::io::stdin().take(STDIN_MAX_BYTES + 1);
    let mut buffer = vec![0u8; pocket_proto::CHUNK_SIZE_BYTES];
    loop {
        let n = stdin.read(&mut buffer).await.context("read standard input")?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buffer[..n]);
        progress.bar().inc(n as u64);
    }
    if data.len() as u64 > STDIN_MAX_BYTES {
        bail!(
            "standard input is larger than {} MiB, the most `pocket put -` holds in memory; store it from a file instead",
            STDIN_MAX_BYTES >> 20
        );
    }
    Ok(Bytes::from(data))
}

/// The sources named by `paths`: `-`, files, and with `--recursive` the
/// regular files under directories (in name order). Under a directory,
/// symbolic links and special files are skipped with a note, never
/// followed, so a walk cannot loop; a symbolic link named as an argument is
/// followed, as `cp` does. Each problem is printed and counted.
fn expand(paths: &[PathBuf], options: &PutOptions) -> Inputs {
    let mut inputs = Inputs { sources: Vec::new(), failed: 0 };
    let fail = |inputs: &mut Inputs, label: &str, error: anyhow::Error| {
        eprint!("{}", render_lines(Some(label), &cause_lines(error.as_ref())));
        inputs.failed += 1;
    };
    let mut stdin_named = false;
    for path in paths {
        let label = path.display().to_string();
        if path == Path::new("-") {
            if stdin_named {
                fail(&mut inputs, "-", anyhow::anyhow!("standard input named more than once"));
            } else {
                stdin_named = true;
                inputs.sources.push(Source::Stdin);
            }
            continue;
        }
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(e) => {
                fail(&mut inputs, &label, e.into());
                continue;
            }
        };
        if metadata.is_file() {
            inputs.sources.push(Source::File { path: path.clone(), length_bytes: metadata.len() });
        } else if metadata.is_dir() && options.recursive {
            walk(path, &mut inputs, options.quiet);
        } else if metadata.is_dir() {
            fail(&mut inputs, &label, anyhow::anyhow!("is a directory (pass --recursive to store the files under it)"));
        } else {
            fail(&mut inputs, &label, anyhow::anyhow!("not a regular file (pipe it to `pocket put -` instead)"));
        }
    }
    inputs
}

/// Adds the regular files under `root`: each directory's files in name
/// order, then its subdirectories, depth first.
fn walk(root: &Path, inputs: &mut Inputs, quiet: bool) {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = match std::fs::read_dir(&dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>()) {
            Ok(entries) => entries,
            Err(e) => {
                eprint!("{}", render_lines(Some(&dir.display().to_string()), &cause_lines(&e)));
                inputs.failed += 1;
                continue;
            }
        };
        entries.sort_by_key(|entry| entry.file_name());
        let mut subdirs = Vec::new();
        for entry in entries {
            let path = entry.path();
            // The entry's own type: a symbolic link is not followed.
            let kind = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(e) => {
                    eprint!("{}", render_lines(Some(&path.display().to_string()), &cause_lines(&e)));
                    inputs.failed += 1;
                    continue;
                }
            };
            let file_type = kind.file_type();
            if file_type.is_dir() {
                subdirs.push(path);
            } else if file_type.is_file() {
                inputs.sources.push(Source::File { path, length_bytes: kind.len() });
            } else if !quiet {
                let what = if file_type.is_symlink() { "symbolic link" } else { "special file" };
                eprintln!("note: skipped {} ({what})", path.display());
            }
        }
        // Reversed onto the stack, so they are visited in name order.
        pending.extend(subdirs.into_iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its cause inside its own message, as
    /// `ClientError::Io` does.
    #[derive(Debug)]
    struct Wrapper {
        inner: std::io::Error,
    }

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "outer: {}", self.inner)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.inner)
        }
    }

    #[test]
    fn a_cause_already_in_the_line_before_is_not_repeated() {
        let error = anyhow::Error::new(Wrapper { inner: std::io::Error::other("disk on fire") }).context("get 00ff");
        assert_eq!(cause_lines(error.as_ref()), vec!["get 00ff".to_string(), "outer: disk on fire".to_string()]);
        assert_eq!(render_error(&error), "error: get 00ff\n  caused by: outer: disk on fire\n");
        let error = anyhow::Error::new(pocket_client::ClientError::from(tonic::Status::not_found("key not found")));
        let error = error.context("get 00ff");
        assert_eq!(render_error(&error), "error: get 00ff\n  caused by: not found: key not found\n");
        assert_eq!(
            render_lines(Some("a.txt"), &["not found: gone".to_string(), "deeper".to_string()]),
            "error: a.txt: not found: gone\n  caused by: deeper\n"
        );
    }
}
