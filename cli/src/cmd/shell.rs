//! `dsbox shell`: an interactive Python REPL on a sandbox kernel, for humans.
//!
//! The kernel is the same as `dsbox exec`'s (a zygote child joined to a sandbox of its
//! own), kept for the whole session: state persists between inputs. Line editing and
//! history come from rustyline; an input continues on the next line while brackets or
//! a triple-quoted string are open, after a line ending in `:` or `\`, and inside a
//! block until an empty line (as in IPython). ^C clears the line while editing and
//! interrupts the running cell while one runs; ^D (or `exit`) ends the session and
//! destroys the sandbox. Piped stdin works too (no editing; the same continuation rules).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{DefaultHistory, History};
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Editor, Helper};

use super::exec::{ImageSaver, KernelArgs, describe_timings, print_result, runtime, start_kernel};

#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// History file [default: $XDG_DATA_HOME/dsbox/shell_history or
    /// ~/.local/share/dsbox/shell_history].
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

/// Does `input` need another line before it can run? (Python's rules, approximated the
/// way IPython's terminal does: open brackets or triple quotes, a trailing `:` or `\`,
/// or a multi-line block not yet ended by an empty line.)
pub fn needs_more(input: &str) -> bool {
    if input.trim().is_empty() {
        return false;
    }
    let mut depth: i32 = 0;
    let mut quote: Option<(char, bool)> = None; // (quote char, triple)
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some((q, triple)) => {
                if c == '\\' {
                    i += 2;
                    continue;
                }
                if triple {
                    if c == q && chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                        quote = None;
                        i += 3;
                        continue;
                    }
                } else if c == q || c == '\n' {
                    quote = None;
                }
            }
            None => match c {
                '#' => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                    continue;
                }
                '\'' | '"' => {
                    let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
                    quote = Some((c, triple));
                    i += if triple { 3 } else { 1 };
                    continue;
                }
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
        i += 1;
    }
    if matches!(quote, Some((_, true))) || depth > 0 {
        return true;
    }
    let lines: Vec<&str> = input.lines().collect();
    let last = strip_comment(lines.last().copied().unwrap_or("")).trim_end();
    if last.ends_with('\\') || last.ends_with(':') {
        return true;
    }
    // A block (or a cell magic) goes on until an empty line.
    let block = lines.len() > 1
        && (lines[0].trim_start().starts_with("%%")
            || lines
                .iter()
                .any(|l| strip_comment(l).trim_end().ends_with(':')));
    block && !input.ends_with('\n') && !lines.last().is_some_and(|l| l.trim().is_empty())
}

/// The line without a trailing `# comment` (quotes respected, roughly).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

/// rustyline helper: only the Python continuation rules.
struct PythonInput;

impl Completer for PythonInput {
    type Candidate = String;
}
impl Hinter for PythonInput {
    type Hint = String;
}
impl Highlighter for PythonInput {}
impl Validator for PythonInput {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if needs_more(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}
impl Helper for PythonInput {}

fn history_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    if flag.is_some() {
        return flag;
    }
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/share"),
    };
    Some(data.join("dsbox/shell_history"))
}

/// Where the inputs come from: an editor on a terminal, plain lines otherwise.
enum Input {
    Terminal(Box<Editor<PythonInput, DefaultHistory>>),
    Piped(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Input {
    /// The next complete input; None at end of input.
    fn next(&mut self, n: u64) -> anyhow::Result<Option<String>> {
        match self {
            Input::Terminal(rl) => loop {
                match rl.readline(&format!("In [{n}]: ")) {
                    Ok(line) => return Ok(Some(line)),
                    Err(ReadlineError::Interrupted) => continue,
                    Err(ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(e).context("cannot read the terminal"),
                }
            },
            Input::Piped(lines) => {
                let mut cell = String::new();
                for line in lines.by_ref() {
                    let line = line.context("cannot read stdin")?;
                    if !cell.is_empty() {
                        cell.push('\n');
                    }
                    cell.push_str(&line);
                    if !needs_more(&cell) {
                        return Ok(Some(cell));
                    }
                }
                Ok((!cell.trim().is_empty()).then_some(cell))
            }
        }
    }
}

pub fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let setup = args.kernel.setup()?;
    let rt = runtime()?;
    let (template, mut sandbox) = rt.block_on(start_kernel(&setup))?;
    let interactive = std::io::stdin().is_terminal();
    let history = history_path(args.history);
    let mut input = if interactive {
        let mut rl: Editor<PythonInput, DefaultHistory> =
            Editor::new().context("cannot set up line editing")?;
        rl.set_helper(Some(PythonInput));
        if let Some(h) = &history {
            let _ = rl.load_history(h);
        }
        Input::Terminal(Box::new(rl))
    } else {
        Input::Piped(std::io::stdin().lines())
    };
    if interactive {
        eprintln!(
            "dsbox shell on {} (preloaded: {}), sandbox {}",
            setup.config.rootfs.name,
            setup.config.preload.join(", "),
            sandbox.id()
        );
        eprintln!("{}", describe_timings(sandbox.acquire_timings()));
        eprintln!(
            "Files: /workdir (scratch), /data (read-only task data). ^C interrupts a cell, ^D exits."
        );
    }
    let mut images = ImageSaver::new(&setup.images);
    let mut n = 1u64;
    let mut failed = false;
    while let Some(cell) = input.next(n)? {
        let trimmed = cell.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Input::Terminal(rl) = &mut input {
            let _ = rl.history_mut().add(&cell);
        }
        if matches!(trimmed, "exit" | "quit" | "exit()" | "quit()") {
            break;
        }
        let interrupter = sandbox.interrupter();
        let result = rt.block_on(async {
            let exec = sandbox.execute(&cell, setup.timeout);
            tokio::pin!(exec);
            loop {
                tokio::select! {
                    r = &mut exec => break r,
                    _ = tokio::signal::ctrl_c() => {
                        if let Some(i) = &interrupter {
                            let _ = i.interrupt();
                        }
                    }
                }
            }
        })?;
        failed = result.status != dsbox_kernel::CellStatus::Ok;
        print_result(&result, &mut images, &format!("Out[{n}]: "))?;
        n += 1;
    }
    if let (Input::Terminal(rl), Some(h)) = (&mut input, &history) {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = rl.save_history(h);
    }
    rt.block_on(sandbox.close())?;
    drop(template);
    // Piped sessions report whether the last input failed, like a script would.
    Ok(if failed && !interactive {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::needs_more;

    #[test]
    fn inputs_continue_like_ipython() {
        for complete in [
            "1 + 1",
            "x = [1, 2]",
            "print('a:')",
            "s = '''a\nb'''",
            "x = 1  # note:",
            "",
            "for i in range(3):\n    print(i)\n",
            "for i in range(3):\n    print(i)\n    ",
        ] {
            assert!(!needs_more(complete), "complete: {complete:?}");
        }
        for incomplete in [
            "for i in range(3):",
            "x = [1,\n2",
            "s = '''a",
            "x = 1 + \\",
            "def f():\n    return 1",
            "%%bash\necho hi",
            "d = {'a': (1,",
        ] {
            assert!(needs_more(incomplete), "incomplete: {incomplete:?}");
        }
    }
}
