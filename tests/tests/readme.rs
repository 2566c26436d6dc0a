//! The README's walkthrough ("Five minutes on one machine"), run as written: its commands are
//! read from README.md when the test runs, so a command edited there is the command run here.
//!
//! The README is read by these rules, which its walkthrough follows:
//! - `sh` blocks are run one line at a time in one `bash`, in a directory that stands for the
//!   clone (its `target/release` is the directory of the binaries this test run built, so the
//!   README's own `export PATH=...` line puts them on `PATH`), with `TMPDIR` in the test's
//!   temporary directory (`mktemp -d` lands there). The `cargo build` line is not run: the test
//!   checks that it builds every program the walkthrough uses (`cargo metadata`).
//! - What follows ` # ` on a line is what the command prints, `...` standing for anything;
//!   a command without one may print anything but must succeed.
//! - `TICKET` and `BOB_PEER_ID` stand for what Bob's `ticket` and `id` commands printed.
//! - A `p2p-chat` line is a terminal of its own: it is started in the background with its
//!   standard input from a pipe the test types into; its comment is a line it prints.
//! - A `text` block is typed into the chat started last (Alice's); its comments say who prints
//!   what (`Alice: ...`, `Bob: ...`, `both: ...`), separated by two spaces or more.

use std::{
    collections::HashMap,
    io::Write,
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{Signal, killpg},
        stat::Mode,
    },
    unistd::Pid,
};
use p2pos_client::{Client, Gateway, Target};
use p2pos_tests::{START_DEADLINE, bin, wait_for};

const T: Duration = Duration::from_secs(30);
/// The walkthrough's section of README.md.
const SECTION: &str = "## Five minutes on one machine";
/// Each placeholder, and the end of the earlier command whose output stands in for it.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("TICKET", "--data-dir \"$BOB\" ticket"),
    ("BOB_PEER_ID", "--data-dir \"$BOB\" id"),
];

/// One line of a code block: what is run or typed, and what it should print.
#[derive(Debug)]
struct Step {
    command: String,
    expect: Vec<String>,
}

/// A fenced code block of the walkthrough.
#[derive(Debug)]
struct Block {
    lang: String,
    steps: Vec<Step>,
}

/// The walkthrough section's code blocks, with `\` continuations joined and each comment split
/// off its command (a comment alone on a line adds to the step before).
fn walkthrough(readme: &str) -> Vec<Block> {
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let section = &readme[start + SECTION.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.trim().strip_prefix("```") else {
            continue;
        };
        let mut block = Block {
            lang: lang.to_owned(),
            steps: Vec::new(),
        };
        let mut pending = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if let Some(joined) = line.strip_suffix('\\') {
                pending.push_str(joined);
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            let (command, comment) = match line.find(" # ") {
                Some(at) => (&line[..at], Some(line[at + 3..].trim())),
                None if line.trim_start().starts_with("# ") => ("", line.trim().strip_prefix("# ")),
                None => (line.as_str(), None),
            };
            let command = command.trim();
            match (command.is_empty(), block.steps.last_mut()) {
                (true, Some(last)) => last.expect.extend(comment.map(str::to_owned)),
                (true, None) => {}
                (false, _) => block.steps.push(Step {
                    command: command.to_owned(),
                    expect: comment.map(str::to_owned).into_iter().collect(),
                }),
            }
        }
        blocks.push(block);
    }
    blocks
}

/// Whether `text` is `pattern`, where each `...` of the pattern stands for any text.
fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return text == pattern;
    }
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Words of a command that look like placeholders (all capitals, not `$VARIABLES`).
fn placeholders(command: &str) -> Vec<&str> {
    command
        .split_whitespace()
        .filter(|word| {
            word.len() > 1
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// The `bash` the walkthrough's commands run in, in a process group of its own (so nothing it
/// started outlives the test). Each line is `eval`ed as typed, with standard input from
/// /dev/null; after it, a marker line with its exit status ends its output.
struct Shell {
    child: Child,
    script: Option<ChildStdin>,
    output: mpsc::Receiver<String>,
}

const DONE: &str = "__p2pos_readme_done";

impl Shell {
    fn start(clone: &Path, tmp: &Path) -> Shell {
        let script = format!(
            "exec 2>&1 3<&0 </dev/null
             while IFS= read -r -u 3 line; do eval \"$line\"; printf '\\n{DONE} %s\\n' \"$?\"; done"
        );
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-c", &script])
            .current_dir(clone)
            .env("TMPDIR", tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("P2POS_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("start bash");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Shell {
            script: child.stdin.take(),
            child,
            output,
        }
    }

    /// Runs one line; returns its exit status and what it printed (trailing space trimmed).
    fn run(&mut self, line: &str) -> (i32, String) {
        let script = self.script.as_mut().expect("bash's input is open");
        writeln!(script, "{line}").expect("write to bash");
        script.flush().expect("flush");
        let until = Instant::now() + T;
        let mut printed = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self.output.recv_timeout(left).unwrap_or_else(|_| {
                panic!("`{line}` did not finish within {T:?}; it printed:\n{printed:#?}")
            });
            if let Some(status) = line.strip_prefix(DONE) {
                let status = status.trim().parse().expect("an exit status");
                return (status, printed.join("\n").trim_end().to_owned());
            }
            printed.push(line);
        }
    }

    /// What `word` (e.g. `"$ALICE"`) expands to in the shell.
    fn expand(&mut self, word: &str) -> String {
        let (status, value) = self.run(&format!("printf '%s\\n' {word}"));
        assert_eq!(status, 0, "cannot expand {word}");
        value
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Stop what the walkthrough left running (the nodes stop cleanly on SIGTERM), then
        // end bash; anything still there after the deadline is killed with the group.
        if let Some(mut script) = self.script.take() {
            let _ = writeln!(script, "kill $(jobs -p) 2>/dev/null; wait");
        }
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A `p2p-chat` started by the walkthrough: the pipe the test types into and the file its
/// output goes to.
struct Chat {
    input: std::fs::File,
    output: PathBuf,
}

impl Chat {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a line matching `pattern` among those printed after the first `after`.
    async fn expect(&self, who: &str, pattern: &str, after: usize) {
        wait_for(
            &format!("{who}'s chat to print {pattern:?}"),
            T,
            || async move {
                self.lines()
                    .iter()
                    .skip(after)
                    .any(|line| matches(pattern, line))
                    .then_some(())
            },
        )
        .await;
    }

    fn type_line(&mut self, line: &str) {
        writeln!(self.input, "{line}").expect("type into p2p-chat");
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.output.display(),
                self.lines().join("\n")
            );
        }
    }
}

/// Waits until the node with data directory `dir` answers on its gateway.
async fn node_answers(dir: &Path) {
    let target = Target::new(
        Gateway::Unix(dir.join("gateway.sock")),
        None,
        Some(dir.to_owned()),
    )
    .expect("target");
    wait_for(
        &format!("the node in {} to answer", dir.display()),
        START_DEADLINE,
        || {
            let target = target.clone();
            async move {
                let client = Client::connect(&target).await.ok()?;
                client
                    .node()
                    .get_info(p2pos_proto::node::v1::GetInfoRequest {})
                    .await
                    .ok()
            }
        },
    )
    .await;
}

/// Opens the write end of `fifo` once its reader has opened it.
async fn open_fifo(fifo: &Path) -> std::fs::File {
    wait_for("p2p-chat to open its input", T, || async move {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(fifo)
            .ok()
    })
    .await
}

/// Checks that the walkthrough's build line builds every workspace program it uses.
fn check_build_line(build: &str, commands: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(&root)
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {out:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let key = match build.split_whitespace().collect::<Vec<_>>()[..] {
        ["cargo", "build", "--release"] => "workspace_default_members",
        ["cargo", "build", "--release", "--workspace"] => "workspace_members",
        _ => panic!("teach this test which packages `{build}` builds"),
    };
    let selected: Vec<&str> = metadata[key]
        .as_array()
        .unwrap_or_else(|| panic!("cargo metadata has no {key}"))
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let words: Vec<&str> = commands
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .collect();
    let packages = metadata["packages"].as_array().expect("packages");
    for package in packages {
        let built = selected.contains(&package["id"].as_str().expect("package id"));
        for target in package["targets"].as_array().expect("targets") {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
            let name = target["name"].as_str().expect("target name");
            if is_bin && words.contains(&name) {
                assert!(
                    built,
                    "the README's walkthrough runs {name}, which `{build}` does not build"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_works_as_written() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let blocks = walkthrough(&readme);
    assert!(
        blocks.iter().any(|b| b.lang == "sh") && blocks.iter().any(|b| b.lang == "text"),
        "the walkthrough has commands to run and lines to type: {blocks:#?}"
    );

    // The clone: `target/release` is this run's binaries.
    let dir = tempfile::Builder::new()
        .prefix("p2pos-readme-")
        .tempdir()
        .expect("temp dir");
    let clone = dir.path().join("clone");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(clone.join("target")).expect("mkdir");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let bins = bin("p2posd").parent().expect("bin dir").to_owned();
    std::os::unix::fs::symlink(&bins, clone.join("target/release")).expect("symlink");
    let mut shell = Shell::start(&clone, &tmp);

    let all_commands: String = blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| &b.steps)
        .map(|s| format!("{}\n", s.command))
        .collect();
    let mut printed: Vec<(String, String)> = Vec::new();
    let mut chats: HashMap<String, Chat> = HashMap::new();
    let mut last_chat = None;
    for block in &blocks {
        for step in &block.steps {
            match block.lang.as_str() {
                "sh" if step.command.starts_with("cargo ") => {
                    check_build_line(&step.command, &all_commands);
                }
                "sh" => {
                    let mut command = step.command.clone();
                    for word in placeholders(&step.command) {
                        let (_, by) = PLACEHOLDERS
                            .iter()
                            .find(|(name, _)| *name == word)
                            .unwrap_or_else(|| {
                                panic!("unknown placeholder {word} in `{}`", step.command)
                            });
                        let value = printed
                            .iter()
                            .rev()
                            .find(|(cmd, _)| cmd.ends_with(by))
                            .map(|(_, out)| out.clone())
                            .unwrap_or_else(|| {
                                panic!("no command before `{command}` ends with {by}")
                            });
                        command = command.replace(word, &value);
                    }
                    let program = command.split_whitespace().next().unwrap_or_default();
                    if program == "p2p-chat" {
                        let who = command
                            .split_whitespace()
                            .skip_while(|w| *w != "--data-dir")
                            .nth(1)
                            .expect("a p2p-chat line names its --data-dir")
                            .trim_matches(|c| c == '"' || c == '$')
                            .to_ascii_lowercase();
                        let fifo = dir.path().join(format!("{who}-chat.in"));
                        let output = dir.path().join(format!("{who}-chat.out"));
                        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).expect("mkfifo");
                        let (status, _) = shell.run(&format!(
                            "{command} <'{}' >'{}' 2>&1 &",
                            fifo.display(),
                            output.display()
                        ));
                        assert_eq!(status, 0, "`{command}` starts");
                        let chat = Chat {
                            input: open_fifo(&fifo).await,
                            output,
                        };
                        for pattern in &step.expect {
                            chat.expect(&who, pattern, 0).await;
                        }
                        chats.insert(who.clone(), chat);
                        last_chat = Some(who);
                        continue;
                    }
                    let (status, output) = shell.run(&command);
                    assert_eq!(status, 0, "`{command}` failed; it printed:\n{output}");
                    match &step.expect[..] {
                        [] => {}
                        [one] => assert!(
                            matches(one, &output),
                            "`{command}` printed\n{output}\nnot what the README says: {one}"
                        ),
                        several => {
                            for pattern in several {
                                assert!(
                                    output.lines().any(|line| matches(pattern, line)),
                                    "`{command}` printed\n{output}\nwith no line like {pattern}"
                                );
                            }
                        }
                    }
                    if program == "p2posd" {
                        let data_dir = command
                            .split_whitespace()
                            .skip_while(|w| *w != "--data-dir")
                            .nth(1)
                            .expect("a p2posd line names its --data-dir");
                        node_answers(Path::new(&shell.expand(data_dir))).await;
                    }
                    printed.push((step.command.clone(), output));
                }
                "text" => {
                    let typist = last_chat.clone().expect("a chat to type into");
                    let marks: HashMap<String, usize> = chats
                        .iter()
                        .map(|(who, chat)| (who.clone(), chat.lines().len()))
                        .collect();
                    chats
                        .get_mut(&typist)
                        .expect("the chat")
                        .type_line(&step.command);
                    for comment in &step.expect {
                        for said in comment.split("  ").map(str::trim).filter(|s| !s.is_empty()) {
                            let (who, pattern) = said
                                .split_once(": ")
                                .unwrap_or_else(|| panic!("`{said}` does not say who prints it"));
                            let who = who.split([',', ' ']).next().unwrap_or_default();
                            let whose: Vec<&String> = if who == "both" {
                                chats.keys().collect()
                            } else {
                                vec![
                                    &chats
                                        .get_key_value(&who.to_ascii_lowercase())
                                        .unwrap_or_else(|| panic!("no chat of {who}"))
                                        .0,
                                ]
                            };
                            for name in whose {
                                chats[name].expect(name, pattern, marks[name]).await;
                            }
                        }
                    }
                }
                other => panic!("a {other:?} block in the walkthrough: teach this test to run it"),
            }
        }
    }
    assert_eq!(chats.len(), 2, "the walkthrough has two chats");
    drop(shell);
}

#[test]
fn patterns_and_placeholders() {
    assert!(matches("p2posb...", "p2posbitaa"));
    assert!(matches("a...b...c", "a-b-b-c"));
    assert!(matches("call-....wav", "call-1.wav"));
    assert!(!matches("call-....wav", "call-1wav"));
    assert!(!matches("12D3KooW...", "error: 12D3KooW"));
    assert!(!matches("x...x", "x"));
    assert!(matches("exact", "exact") && !matches("exact", "exact!"));
    assert_eq!(
        placeholders("p2pctl --data-dir \"$ALICE\" dial TICKET"),
        ["TICKET"]
    );
    let blocks = walkthrough(
        "## Five minutes on one machine\n```sh\na \\\n  b   # out\n    # more\n```\n## Next\n```sh\nc\n```",
    );
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].steps[0].command, "a   b");
    assert_eq!(blocks[0].steps[0].expect, ["out", "more"]);
}
