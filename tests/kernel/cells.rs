//! What a cell returns: state, ordered streams, results, rich output, errors, magics.

use dsbox_kernel::{CellStatus, OutputItem, StreamName};

use crate::{kernel, run};

fn streams(cell: &dsbox_kernel::CellResult) -> Vec<(StreamName, String)> {
    cell.items
        .iter()
        .filter_map(|i| match i {
            OutputItem::Stream { name, text } => Some((*name, text.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn state_is_kept_across_cells() {
    let mut k = kernel().await;
    let cell = run(&mut k, "x = 41\ndef inc(v):\n    return v + 1").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert!(cell.items.is_empty(), "{cell:?}");
    let cell = run(&mut k, "inc(x)").await;
    assert_eq!(cell.result_text(), Some("42"));
    assert_eq!(cell.execution_count, Some(2));
    let cell = run(
        &mut k,
        "import pickle\nclass P: pass\nlen(pickle.dumps(P())) > 0",
    )
    .await;
    assert_eq!(
        cell.result_text(),
        Some("True"),
        "user classes pickle: {cell:?}"
    );
}

#[tokio::test]
async fn each_stream_keeps_its_order_across_python_fd_c_and_subprocess_writes() {
    let mut k = kernel().await;
    let code = r#"
import os, sys, subprocess, ctypes
print("1 print")
os.write(1, b"2 os.write\n")
sys.stderr.write("3 stderr\n")
os.write(2, b"4 fd2\n")
subprocess.run(["sh", "-c", "echo 5 subprocess; echo 6 subprocess-err >&2"])
print("7 print", flush=True)
ctypes.CDLL(None).printf(b"8 C printf\n")
os.write(1, b"9 os.write\n")
print("10 print")
"#;
    let cell = run(&mut k, code).await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(
        cell.stdout(),
        "1 print\n2 os.write\n5 subprocess\n7 print\n8 C printf\n9 os.write\n10 print\n"
    );
    assert_eq!(cell.stderr(), "3 stderr\n4 fd2\n6 subprocess-err\n");
}

#[tokio::test]
async fn python_level_writes_keep_their_order_across_streams() {
    let mut k = kernel().await;
    let code = "import sys, os\nprint('a')\nsys.stderr.write('b\\n')\nprint('c')\nos.write(2, b'd\\n')\nprint('e')";
    let cell = run(&mut k, code).await;
    let expected: Vec<(StreamName, String)> = [
        (StreamName::Stdout, "a\n"),
        (StreamName::Stderr, "b\n"),
        (StreamName::Stdout, "c\n"),
        (StreamName::Stderr, "d\n"),
        (StreamName::Stdout, "e\n"),
    ]
    .iter()
    .map(|(n, t)| (*n, t.to_string()))
    .collect();
    assert_eq!(merge_adjacent(streams(&cell)), expected);
}

/// Adjacent items of the same stream are one piece of text (the kernel may flush anywhere).
fn merge_adjacent(items: Vec<(StreamName, String)>) -> Vec<(StreamName, String)> {
    let mut out: Vec<(StreamName, String)> = Vec::new();
    for (name, text) in items {
        match out.last_mut() {
            Some((last, t)) if *last == name => t.push_str(&text),
            _ => out.push((name, text)),
        }
    }
    out
}

#[tokio::test]
async fn last_expression_is_the_result_with_ipython_semantics() {
    let mut k = kernel().await;
    let cell = run(&mut k, "a = 2\na * 21").await;
    assert_eq!(cell.result_text(), Some("42"));
    let cell = run(&mut k, "a * 21;").await;
    assert_eq!(
        cell.result_text(),
        None,
        "a trailing ; hides the result: {cell:?}"
    );
    let cell = run(&mut k, "a * 21;  # comment").await;
    assert_eq!(cell.result_text(), None);
    let cell = run(&mut k, "b = a; b").await;
    assert_eq!(cell.result_text(), Some("2"));
    let cell = run(&mut k, "print('x')").await;
    assert_eq!(cell.result_text(), None, "None is not shown");
    let cell = run(&mut k, "'text'").await;
    assert_eq!(cell.result_text(), Some("'text'"), "repr, like IPython");
    let cell = run(&mut k, "list(range(30))").await;
    assert_eq!(
        cell.result_text().map(|t| t.lines().count()),
        Some(30),
        "long containers are pretty-printed one item per line: {cell:?}"
    );
    let cell = run(&mut k, "if a:\n    a + 1").await;
    assert_eq!(
        cell.result_text(),
        None,
        "only a top-level expression is a result"
    );
    let cell = run(&mut k, "    c = 5\n    c").await;
    assert_eq!(
        cell.result_text(),
        Some("5"),
        "an indented cell is dedented"
    );
    let cell = run(&mut k, "_").await;
    assert_eq!(cell.result_text(), Some("5"), "_ is the last result");
}

#[tokio::test]
async fn dataframe_gives_text_plain_and_text_html() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})\ndf",
    )
    .await;
    let data = match cell.items.as_slice() {
        [OutputItem::Result { data }] => data,
        other => panic!("expected one result item, got {other:?}"),
    };
    let plain = &data["text/plain"];
    assert!(
        plain.contains("a  b") && plain.contains("0  1  x"),
        "{plain}"
    );
    let html = &data["text/html"];
    assert!(
        html.contains("<table") && html.contains("<td>x</td>"),
        "{html}"
    );
    let cell = run(&mut k, "display(int(df.a.sum()))\nprint('after')").await;
    assert!(
        matches!(cell.items[0], OutputItem::DisplayData { .. }),
        "{cell:?}"
    );
    assert_eq!(cell.items[0].text_plain(), Some("3"));
    assert_eq!(cell.stdout(), "after\n");
}

#[tokio::test]
async fn matplotlib_plot_gives_a_png_on_show_and_at_cell_end() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('between')\nplt.figure(figsize=(2, 2)); plt.bar([1], [2]);",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    let kinds: Vec<&str> = cell
        .items
        .iter()
        .map(|i| match i {
            OutputItem::DisplayData { .. } => "figure",
            OutputItem::Stream { .. } => "stream",
            OutputItem::Result { .. } => "result",
            OutputItem::Error { .. } => "error",
        })
        .collect();
    assert_eq!(kinds, ["figure", "stream", "figure"], "{cell:?}");
    for item in [&cell.items[0], &cell.items[2]] {
        let png = item.image_png().expect("image/png").expect("valid base64");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        // IHDR: width and height are big-endian u32 at bytes 16..24.
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert!(width > 100 && height > 100, "{width}x{height}");
        assert!(item.text_plain().unwrap().starts_with("<Figure size"));
    }
    let cell = run(
        &mut k,
        "import matplotlib.pyplot as plt\nlen(plt.get_fignums())",
    )
    .await;
    assert_eq!(
        cell.result_text(),
        Some("0"),
        "figures are closed after being shown"
    );
}

#[tokio::test]
async fn exceptions_give_a_traceback_without_ansi_codes_or_kernel_frames() {
    let mut k = kernel().await;
    run(&mut k, "def f(x):\n    return 1 / x").await;
    let cell = run(&mut k, "y = 3\nf(0)").await;
    assert_eq!(cell.status, CellStatus::Error);
    let (name, value, tb) = cell.error().expect("an error item");
    assert_eq!(name, "ZeroDivisionError");
    assert_eq!(value, "division by zero");
    let text = tb.join("\n");
    assert!(!text.contains('\x1b'), "no ANSI codes: {text}");
    assert!(
        !text.contains("dsbox_kernel"),
        "kernel frames hidden: {text}"
    );
    assert!(
        text.starts_with("Traceback (most recent call last):"),
        "{text}"
    );
    assert!(text.contains("<cell-2>") && text.contains("f(0)"), "{text}");
    assert!(
        text.contains("<cell-1>") && text.contains("return 1 / x"),
        "{text}"
    );
    assert!(
        tb.last().unwrap().starts_with("ZeroDivisionError"),
        "{tb:?}"
    );
    assert_eq!(
        run(&mut k, "y").await.result_text(),
        Some("3"),
        "state before the error kept"
    );

    let cell = run(&mut k, "def g(:\n    pass").await;
    let (name, _, tb) = cell.error().expect("a syntax error item");
    assert_eq!(name, "SyntaxError");
    assert!(tb.iter().any(|l| l.contains("def g(:")), "{tb:?}");
}

#[tokio::test]
async fn shell_escapes_run_commands_with_captured_output() {
    let mut k = kernel().await;
    let cell = run(&mut k, "!echo hi").await;
    assert_eq!(cell.stdout(), "hi\n", "{cell:?}");
    let cell = run(
        &mut k,
        "n = 7\nfor i in range(2):\n    !echo loop {i} $n\nfiles = !printf 'a\\nb\\n'\nfiles",
    )
    .await;
    assert_eq!(cell.stdout(), "loop 0 7\nloop 1 7\n", "{cell:?}");
    assert_eq!(cell.result_text(), Some("['a', 'b']"));
    let cell = run(&mut k, "!exit 3\n_exit_code").await;
    assert_eq!(cell.result_text(), Some("3"));
    let cell = run(&mut k, "s = '!not a command'\nprint(s)").await;
    assert_eq!(
        cell.stdout(),
        "!not a command\n",
        "! inside strings is left alone"
    );
}

#[tokio::test]
async fn line_magics_are_accepted_and_unknown_ones_are_usage_errors() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "%matplotlib inline\n%config InlineBackend.figure_format = 'png'\n1",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(cell.result_text(), Some("1"));
    let cell = run(&mut k, "%cd /tmp\n%pwd").await;
    assert_eq!(cell.result_text(), Some("'/tmp'"), "{cell:?}");
    let cell = run(
        &mut k,
        "%%writefile /tmp/dsbox-kernel-test-magic.txt\nhello",
    )
    .await;
    assert!(
        cell.stdout().contains("dsbox-kernel-test-magic.txt"),
        "{cell:?}"
    );
    let cell = run(&mut k, "open('/tmp/dsbox-kernel-test-magic.txt').read()").await;
    assert_eq!(cell.result_text(), Some("'hello\\n'"));
    run(&mut k, "numbers = [1, 2, 3]").await;
    let cell = run(&mut k, "%whos").await;
    let stdout = cell.stdout();
    let table: Vec<&str> = stdout.lines().collect();
    assert_eq!(table[0], "Variable   Type   Data/Info", "{cell:?}");
    assert!(table.contains(&"numbers    list   n=3"), "{cell:?}");
    let cell = run(&mut k, "%%nosuchmagic\nprint('never')").await;
    let (name, value, traceback) = cell.error().unwrap();
    assert_eq!(
        (name, value, traceback.len()),
        ("UsageError", "Cell magic `%%nosuchmagic` not found.", 1),
        "{cell:?}"
    );
    assert_eq!(cell.stdout(), "", "{cell:?}");
    let cell = run(&mut k, "print('never')\n%nosuchmagic").await;
    assert_eq!(cell.status, CellStatus::Error);
    let (name, value, _) = cell.error().unwrap();
    assert_eq!(name, "UsageError");
    assert!(value.contains("%nosuchmagic"), "{value}");
    assert_eq!(
        cell.stdout(),
        "",
        "a cell with an unknown magic does not run"
    );
}

#[tokio::test]
async fn timeit_takes_ipython_options_in_either_spelling_and_as_a_cell_magic() {
    let mut k = kernel().await;
    run(&mut k, "x = 20").await;
    let cell = run(&mut k, "%timeit -n1 -r1 x + 1").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert!(
        cell.stdout()
            .contains("per loop (mean ± std. dev. of 1 run, 1 loop each)"),
        "{cell:?}"
    );
    let cell = run(
        &mut k,
        "t = %timeit -o -q -n 3 -r 2 x + 1\n(t.loops, t.repeat, len(t.all_runs))",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(cell.stdout(), "", "-q prints nothing: {cell:?}");
    assert_eq!(cell.result_text(), Some("(3, 2, 2)"), "{cell:?}");
    let cell = run(&mut k, "%%timeit -n2 -r2 y = x * 2\ny + 1").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert!(
        cell.stdout().contains("of 2 runs, 2 loops each"),
        "{cell:?}"
    );
    let cell = run(&mut k, "%timeit -n lots x + 1").await;
    assert_eq!(cell.status, CellStatus::Error);
    let (name, value, _) = cell.error().unwrap();
    assert_eq!(name, "UsageError");
    assert!(value.contains("-n needs a whole number"), "{value}");
    // Misuse found while the cell runs is reported the same way, without kernel frames.
    let cell = run(&mut k, "%reset").await;
    let (name, value, traceback) = cell.error().unwrap();
    assert_eq!((name, traceback.len()), ("UsageError", 1), "{cell:?}");
    assert!(value.contains("-f"), "{value}");
}

fn display_data(cell: &dsbox_kernel::CellResult) -> Vec<&dsbox_kernel::MimeBundle> {
    cell.items
        .iter()
        .filter_map(|i| match i {
            OutputItem::DisplayData { data } => Some(data),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn ipython_display_api_works_without_ipython_installed() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "import IPython\n\
         from IPython.display import display, HTML, Markdown, JSON\n\
         from IPython import get_ipython\n\
         print(get_ipython(), IPython.display.HTML is IPython.core.display.HTML)\n\
         display(HTML('<b>x</b>'), JSON({'k': 1}))\n\
         display({'text/plain': 'raw bundle'}, raw=True)\n\
         h = display('first', display_id=True)\n\
         h.update('second')\n\
         Markdown('*m*')",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(cell.stdout(), "None True\n", "{cell:?}");
    let shown = display_data(&cell);
    assert_eq!(shown.len(), 5, "{cell:?}");
    assert_eq!(shown[0]["text/html"], "<b>x</b>");
    assert_eq!(shown[0]["text/plain"], "<IPython.core.display.HTML object>");
    assert_eq!(shown[1]["application/json"], r#"{"k": 1}"#);
    assert_eq!(shown[2]["text/plain"], "raw bundle");
    assert_eq!(shown[3]["text/plain"], "'first'");
    assert_eq!(shown[4]["text/plain"], "'second'");
    let result = cell
        .items
        .iter()
        .find_map(|i| match i {
            OutputItem::Result { data } => Some(data),
            _ => None,
        })
        .expect("a result");
    assert_eq!(result["text/markdown"], "*m*");
}

#[tokio::test]
async fn an_installed_ipythons_display_shows_display_data_instead_of_printing() {
    // IPython's own display() prints when no IPython shell runs; the kernel puts its
    // display in place when IPython's module loads. A stand-in package with IPython's
    // module layout shows that it is the installed one that loads, and patched.
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("IPython/core");
    std::fs::create_dir_all(&core).unwrap();
    std::fs::write(dir.path().join("IPython/__init__.py"), "INSTALLED = True\n").unwrap();
    std::fs::write(core.join("__init__.py"), "").unwrap();
    std::fs::write(
        core.join("display_functions.py"),
        "def display(*objs, **kwargs):\n    print('printed by IPython')\n\
         def clear_output(wait=False):\n    print('\\033[2K', end='')\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("IPython/display.py"),
        "from IPython.core.display_functions import *\n",
    )
    .unwrap();
    let mut k = kernel().await;
    let code = format!(
        "import sys\nsys.path.insert(0, {:?})\nimport IPython\n\
         from IPython.display import display, clear_output\n\
         display(12)\nclear_output()\nIPython.INSTALLED",
        dir.path().display().to_string()
    );
    let cell = run(&mut k, &code).await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(
        cell.result_text(),
        Some("True"),
        "the installed IPython: {cell:?}"
    );
    assert_eq!(cell.stdout(), "", "{cell:?}");
    let shown = display_data(&cell);
    assert_eq!(shown.len(), 1, "{cell:?}");
    assert_eq!(shown[0]["text/plain"], "12");
}

#[tokio::test]
async fn top_level_await_runs_on_a_loop_kept_across_cells_as_in_ipython() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "import asyncio\n\
         async def double(x):\n    await asyncio.sleep(0.01)\n    return x * 2\n\
         r = await double(21)\nr",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(cell.result_text(), Some("42"), "{cell:?}");
    // Statements before an awaiting last expression run inside the loop too.
    let cell = run(
        &mut k,
        "task = asyncio.create_task(double(50))\nawait asyncio.sleep(0)",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    // One-line expressions too; a task from an earlier cell lives on in the same loop.
    let cell = run(&mut k, "await task + await double(1)").await;
    assert_eq!(cell.result_text(), Some("102"), "{cell:?}");
    // Cells without await are untouched: asyncio.run works there, as in plain Python.
    let cell = run(&mut k, "asyncio.run(double(2))").await;
    assert_eq!(cell.result_text(), Some("4"), "{cell:?}");
    // An error shows the user's frames, not the event loop's.
    let cell = run(
        &mut k,
        "async def boom():\n    raise ValueError('boom')\nawait boom()",
    )
    .await;
    let (name, _, traceback) = cell.error().expect("an error");
    assert_eq!(name, "ValueError");
    assert!(
        traceback.iter().all(|l| !l.contains("asyncio")) && traceback[1].contains("<cell-"),
        "{traceback:?}"
    );
    // An interrupted cell shows where it waited, and its rest never runs later, when
    // another cell runs the loop (its sleep ends while the next cell waits).
    let cell = k
        .execute(
            "await asyncio.sleep(3)\nprint('the rest of an interrupted cell')",
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(cell.status, CellStatus::TimedOut, "{cell:?}");
    let (_, _, traceback) = cell.error().expect("an error");
    assert!(
        traceback
            .iter()
            .any(|l| l.contains("await asyncio.sleep(3)")),
        "{traceback:?}"
    );
    let cell = run(&mut k, "await asyncio.sleep(3.5)\nr").await;
    assert_eq!(cell.result_text(), Some("42"), "{cell:?}");
    assert_eq!(cell.stdout(), "", "{cell:?}");
}

#[tokio::test]
async fn shell_aliases_and_automagic_work_in_one_line_cells_as_in_ipython() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data-file.csv"), "a\n1\n").unwrap();
    let mut k = kernel().await;
    run(
        &mut k,
        &format!("d = {:?}", dir.path().display().to_string()),
    )
    .await;
    // `ls $d` and `cat {d}/...`: IPython's aliases, with its $name/{expr} expansion.
    let cell = run(&mut k, "ls $d").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert!(cell.stdout().contains("data-file.csv"), "{cell:?}");
    let cell = run(&mut k, "%cat {d}/data-file.csv").await;
    assert_eq!(cell.stdout(), "a\n1\n", "{cell:?}");
    let cell = run(&mut k, "cd $d").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    let cell = run(&mut k, "pwd").await;
    assert_eq!(
        cell.result_text(),
        Some(
            format!("{:?}", dir.path().display().to_string())
                .replace('"', "'")
                .as_str()
        ),
        "{cell:?}"
    );
    // A variable of the same name, or an assignment to it, is Python again.
    let cell = run(&mut k, "ls = 'mine'").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert_eq!(run(&mut k, "ls").await.result_text(), Some("'mine'"));
    // Cells of more than one line are left alone (IPython 7 and later).
    let cell = run(&mut k, "x = 1\nmkdir newdir").await;
    assert_eq!(cell.error().map(|e| e.0), Some("SyntaxError"), "{cell:?}");
}

#[tokio::test]
async fn object_help_syntax_prints_what_ipythons_pager_shows() {
    let mut k = kernel().await;
    let cell = run(&mut k, "len?").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    let out = cell.stdout();
    assert!(out.contains("Signature: len(obj, /)"), "{out}");
    assert!(
        out.contains("Docstring: Return the number of items in a container."),
        "{out}"
    );
    assert!(
        out.contains("Type:      builtin_function_or_method"),
        "{out}"
    );
    run(
        &mut k,
        "def add(a, b=2):\n    \"Add two numbers.\"\n    return a + b",
    )
    .await;
    let cell = run(&mut k, "x = 1\nadd??").await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    assert!(
        cell.stdout().contains("Source:\ndef add(a, b=2):"),
        "{cell:?}"
    );
    let cell = run(&mut k, "?no_such_name").await;
    assert_eq!(
        cell.stdout(),
        "Object `no_such_name` not found.\n",
        "{cell:?}"
    );
}

#[tokio::test]
async fn kernel_survives_closed_stdout_system_exit_and_deleted_builtins() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "import sys\nsys.stdout.close()\nsys.stdout = open('/dev/null', 'w')\nprint('lost')",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    let cell = run(&mut k, "print('back')").await;
    assert_eq!(cell.stdout(), "back\n", "streams restored at the next cell");
    let cell = run(&mut k, "import sys\nsys.exit(3)").await;
    assert_eq!(cell.error().map(|e| e.0), Some("SystemExit"));
    let cell = run(
        &mut k,
        "import builtins\ndel builtins.len, builtins.isinstance, builtins.repr\nz = 1",
    )
    .await;
    assert_eq!(cell.status, CellStatus::Ok, "{cell:?}");
    let cell = run(&mut k, "z + 1").await;
    assert_eq!(cell.result_text(), Some("2"), "{cell:?}");
    let cell = run(&mut k, "1 / 0").await;
    assert_eq!(
        cell.error().map(|e| e.0),
        Some("ZeroDivisionError"),
        "{cell:?}"
    );
    assert!(
        cell.error().unwrap().2.len() > 1,
        "traceback still formatted: {cell:?}"
    );
    assert_eq!(k.restarts(), 0);
}

#[tokio::test]
async fn output_between_cells_is_reported_with_the_next_cell() {
    let mut k = kernel().await;
    let cell = run(
        &mut k,
        "import subprocess\np = subprocess.Popen(['sh', '-c', 'sleep 0.3; echo late'])",
    )
    .await;
    assert_eq!(cell.stdout(), "");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let cell = run(&mut k, "p.wait()").await;
    assert_eq!(cell.stdout(), "late\n", "{cell:?}");
}

#[tokio::test]
async fn forked_children_print_whole_lines_through_the_captured_fds() {
    let mut k = kernel().await;
    let code = "import multiprocessing as mp\ndef f(i):\n    print('child', i, 'x' * 200)\n    return i\nwith mp.get_context('fork').Pool(4) as p:\n    r = p.map(f, range(64), chunksize=1)\nsum(r)";
    let cell = run(&mut k, code).await;
    assert_eq!(cell.result_text(), Some("2016"), "{cell:?}");
    let out = cell.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 64, "{out}");
    for line in lines {
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("child"), "{line}");
        assert!(
            parts.next().is_some_and(|n| n.parse::<u32>().is_ok()),
            "{line}"
        );
        assert_eq!(parts.next(), Some("x".repeat(200).as_str()), "{line}");
        assert_eq!(parts.next(), None, "{line}");
    }
}
