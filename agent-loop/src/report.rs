//! Reports of a run: a plain-text table for the terminal, Markdown, and a self-contained
//! HTML page (inline CSS and SVG plots drawn here: score per suite, a histogram of turns,
//! time per task; no scripts, no external files).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::metrics::{self, GroupMetrics, RunMetrics};
use crate::record::ResultRecord;
use crate::rundir::{self, RunError, RunManifest, write_atomic};

pub const REPORT_MD: &str = "report.md";
pub const REPORT_HTML: &str = "report.html";

fn pass_k(g: &GroupMetrics) -> Option<f64> {
    g.pass_at.get(&format!("pass@{}", g.k.max(1))).copied()
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.3}"))
}

fn errors_text(g: &GroupMetrics) -> String {
    let e = &g.errors;
    let mut parts = Vec::new();
    for (n, what) in [
        (e.model_errors, "model"),
        (e.sandbox_errors, "sandbox"),
        (e.episode_timeouts, "budget"),
        (e.no_answer, "no answer"),
        (e.cell_timeouts, "cell timeouts"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    for (kind, n) in &e.not_evaluable {
        parts.push(format!("{n} {kind}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// Rows of the summary table: suites, then overall.
fn rows(m: &RunMetrics) -> Vec<(&str, &GroupMetrics)> {
    let mut v: Vec<(&str, &GroupMetrics)> = m.suites.iter().map(|(n, g)| (n.as_str(), g)).collect();
    if m.suites.len() != 1 {
        v.push(("overall", &m.overall));
    }
    v
}

const HEADERS: [&str; 11] = [
    "suite", "tasks", "done", "mean", "pass@1", "max@k", "pass@k", "turns", "tokens", "time s",
    "errors",
];

fn row_cells(name: &str, g: &GroupMetrics) -> [String; 11] {
    [
        name.to_owned(),
        g.tasks.to_string(),
        format!("{}/{}", g.finished, g.planned),
        format!("{:.3}", g.mean),
        opt(g.pass_at.get("pass@1").copied()),
        format!("{:.3}", g.max_at_k),
        opt(pass_k(g)),
        format!("{:.1}", g.mean_turns),
        format!("{:.0}", g.mean_tokens),
        format!("{:.1}", g.mean_time_s),
        errors_text(g),
    ]
}

/// The summary as an aligned text table.
pub fn table(m: &RunMetrics) -> String {
    let body: Vec<[String; 11]> = rows(m).iter().map(|(n, g)| row_cells(n, g)).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for r in &body {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 || i == cells.len() - 1 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(HEADERS.to_vec(), &mut out);
    for r in &body {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn short(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// Per-task rows: (suite, index, id) → records.
fn by_task(records: &[ResultRecord]) -> BTreeMap<(String, usize, String), Vec<&ResultRecord>> {
    let mut m: BTreeMap<(String, usize, String), Vec<&ResultRecord>> = BTreeMap::new();
    for r in records {
        m.entry((r.dataset.clone(), r.index, r.sample_id.clone()))
            .or_default()
            .push(r);
    }
    for rs in m.values_mut() {
        rs.sort_by_key(|r| r.trajectory);
    }
    m
}

fn header_lines(manifest: &RunManifest) -> Vec<(String, String)> {
    let model = match &manifest.model.base_url {
        Some(url) => format!("{} at {url}", manifest.model.name),
        None => format!("{} ({})", manifest.model.name, manifest.model.kind),
    };
    let temp = manifest
        .model
        .temperature
        .map_or_else(|| "server default".into(), |t| t.to_string());
    vec![
        ("Model".into(), model),
        (
            "Scaffold".into(),
            format!(
                "{} (max {} turns, temperature {temp})",
                manifest.scaffold.as_str(),
                manifest.settings.max_turns
            ),
        ),
        (
            "Trajectories".into(),
            format!(
                "{} tasks × k = {}, concurrency {}",
                manifest.tasks.len(),
                manifest.k,
                manifest.concurrency
            ),
        ),
        (
            "Sandboxes".into(),
            format!(
                "{} backend, rootfs {} ({})",
                manifest.backend.backend, manifest.backend.rootfs, manifest.backend.rootfs_hash
            ),
        ),
        (
            "Run".into(),
            format!(
                "started {}, dsbox {}",
                manifest.created, manifest.dsbox_version
            ),
        ),
    ]
}

/// The Markdown report.
pub fn markdown(manifest: &RunManifest, records: &[ResultRecord], m: &RunMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# dsbox evaluation: {}\n", manifest.model.name);
    for (k, v) in header_lines(manifest) {
        let _ = writeln!(s, "- **{k}**: {}", md_escape(&v));
    }
    if !m.complete {
        let _ = writeln!(
            s,
            "- **Incomplete**: {} of {} trajectories finished; continue with `dsbox eval --resume <run dir>`",
            m.overall.finished, m.overall.planned
        );
    }
    let _ = writeln!(s, "\n## Results\n");
    let _ = writeln!(s, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(
        s,
        "|{}|",
        HEADERS
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 || i == 10 { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for (name, g) in rows(m) {
        let cells = row_cells(name, g);
        let _ = writeln!(
            s,
            "| {} |",
            cells
                .iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(
        s,
        "\n`mean`: mean score over all trajectories (no answer = 0). `max@k`: the reference's pass@k, the mean over tasks of the best of k scores. `pass@j`: the unbiased estimator 1 − C(n−c, j)/C(n, j) with c trajectories scoring 1."
    );
    let _ = writeln!(s, "\n## Tasks\n");
    let _ = writeln!(
        s,
        "| task | score | turns | time s | how it ended | prediction | expected |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|---|");
    for ((_, _, id), rs) in by_task(records) {
        let n = rs.len() as f64;
        let mean = rs.iter().map(|r| r.score_or_zero()).sum::<f64>() / n;
        let ends: Vec<&str> = rs.iter().map(|r| r.end_reason.as_str()).collect();
        let _ = writeln!(
            s,
            "| [{}]({}) | {mean:.2} | {:.1} | {:.1} | {} | {} | {} |",
            md_escape(&id),
            rs[0].trajectory_file,
            rs.iter().map(|r| f64::from(r.total_turns)).sum::<f64>() / n,
            rs.iter().map(|r| r.execution_time).sum::<f64>() / n,
            ends.join(", "),
            md_escape(&short(rs[0].prediction.as_deref().unwrap_or("(none)"), 60)),
            md_escape(&short(rs[0].ground_truth.as_deref().unwrap_or(""), 60)),
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart: one row per (label, value, colour), values in [0, max].
fn hbar_chart(
    title: &str,
    items: &[(String, f64, &str)],
    max: f64,
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let row_h = 22.0;
    let label_w = 230.0;
    let bar_w = 420.0;
    let height = 34.0 + row_h * items.len() as f64 + 10.0;
    let width = label_w + bar_w + 80.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><text x="0" y="16" class="title">{t}</text>"#,
        t = esc(title)
    );
    let max = if max > 0.0 { max } else { 1.0 };
    for (i, (label, value, color)) in items.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let w = (value / max).clamp(0.0, 1.0) * bar_w;
        let _ = write!(
            s,
            r##"<text x="{lx}" y="{ty}" class="label" text-anchor="end">{l}</text><rect x="{label_w}" y="{y}" width="{bw}" height="{bh}" fill="#eef0f3"/><rect x="{label_w}" y="{y}" width="{w:.1}" height="{bh}" fill="{color}"><title>{l}: {v}</title></rect><text x="{vx:.1}" y="{ty}" class="value">{v}</text>"##,
            lx = label_w - 8.0,
            ty = y + 15.0,
            l = esc(&short(label, 32)),
            bw = bar_w,
            bh = row_h - 6.0,
            vx = label_w + w + 6.0,
            v = esc(&fmt(*value)),
        );
    }
    s.push_str("</svg>");
    s
}

/// A vertical histogram: counts per bucket label.
fn histogram(title: &str, buckets: &[(String, usize)], x_label: &str) -> String {
    let bar = 26.0;
    let gap = 6.0;
    let plot_h = 160.0;
    let width = 50.0 + (bar + gap) * buckets.len().max(1) as f64 + 20.0;
    let height = plot_h + 70.0;
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><text x="0" y="16" class="title">{t}</text><line x1="40" y1="{base}" x2="{x2}" y2="{base}" stroke="#888"/>"##,
        t = esc(title),
        base = 30.0 + plot_h,
        x2 = width - 10.0,
    );
    for (i, (label, n)) in buckets.iter().enumerate() {
        let x = 45.0 + (bar + gap) * i as f64;
        let h = *n as f64 / max * plot_h;
        let y = 30.0 + plot_h - h;
        let _ = write!(
            s,
            r##"<rect x="{x}" y="{y:.1}" width="{bar}" height="{h:.1}" fill="#4c78a8"><title>{l}: {n}</title></rect><text x="{cx}" y="{ly}" class="label" text-anchor="middle">{l}</text>"##,
            cx = x + bar / 2.0,
            ly = 30.0 + plot_h + 16.0,
            l = esc(label),
        );
        if *n > 0 {
            let _ = write!(
                s,
                r#"<text x="{cx}" y="{vy:.1}" class="value" text-anchor="middle">{n}</text>"#,
                cx = x + bar / 2.0,
                vy = y - 4.0,
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="{cx}" y="{y}" class="label" text-anchor="middle">{xl}</text></svg>"#,
        cx = width / 2.0,
        y = height - 8.0,
        xl = esc(x_label)
    );
    s
}

fn score_color(score: f64) -> &'static str {
    if score >= 1.0 {
        "#54a24b"
    } else if score > 0.0 {
        "#eeca3b"
    } else {
        "#e45756"
    }
}

/// The self-contained HTML report.
pub fn html(manifest: &RunManifest, records: &[ResultRecord], m: &RunMetrics) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dsbox evaluation: {t}</title><style>
body{{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1d2329;padding:0 16px}}
h1{{font-size:22px;margin:0 0 12px}} h2{{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #dde1e6;padding-bottom:4px}}
table{{border-collapse:collapse;width:100%;font-size:13px}} th,td{{padding:4px 8px;border-bottom:1px solid #e6e9ed;text-align:left;vertical-align:top}}
th{{background:#f5f7f9}} td.n{{text-align:right;font-variant-numeric:tabular-nums}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}} dt{{font-weight:600;color:#4a5560}}
.charts{{display:flex;flex-wrap:wrap;gap:18px}} .card{{border:1px solid #e1e5ea;border-radius:6px;padding:10px 12px;background:#fff}}
svg .title{{font:600 13px system-ui,sans-serif;fill:#1d2329}} svg .label{{font:11px system-ui,sans-serif;fill:#4a5560}} svg .value{{font:11px system-ui,sans-serif;fill:#1d2329}}
.warn{{background:#fff4e5;border:1px solid #f0c36d;padding:6px 10px;border-radius:4px}} code{{font-size:12px}} .muted{{color:#6b7680}}
</style></head><body><h1>dsbox evaluation: {t}</h1><dl>"#,
        t = esc(&manifest.model.name)
    );
    for (k, v) in header_lines(manifest) {
        let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", esc(&k), esc(&v));
    }
    s.push_str("</dl>");
    if !m.complete {
        let _ = write!(
            s,
            r#"<p class="warn">Incomplete: {} of {} trajectories finished. Continue with <code>dsbox eval --resume &lt;run dir&gt;</code>.</p>"#,
            m.overall.finished, m.overall.planned
        );
    }
    s.push_str("<h2>Results</h2><table><tr>");
    for h in HEADERS {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>");
    for (name, g) in rows(m) {
        s.push_str("<tr>");
        for (i, c) in row_cells(name, g).iter().enumerate() {
            let class = if i == 0 || i == 10 {
                ""
            } else {
                " class=\"n\""
            };
            let _ = write!(s, "<td{class}>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table><p class=\"muted\">mean: over all trajectories (no answer = 0). max@k: the reference's pass@k (mean over tasks of the best of k). pass@j: unbiased estimator 1 − C(n−c, j)/C(n, j).</p>");

    // Plots.
    s.push_str("<h2>Plots</h2><div class=\"charts\">");
    let mut suite_items: Vec<(String, f64, &str)> = Vec::new();
    for (name, g) in &m.suites {
        suite_items.push((format!("{name} mean"), g.mean, "#4c78a8"));
        if g.k > 1 {
            suite_items.push((format!("{name} max@{}", g.k), g.max_at_k, "#72b7b2"));
        }
    }
    let _ = write!(
        s,
        "<div class=\"card\">{}</div>",
        hbar_chart("Score per suite", &suite_items, 1.0, &|v| format!("{v:.3}"))
    );
    let max_turns = manifest.settings.max_turns.max(1) as usize;
    let mut turns = vec![0usize; max_turns + 1];
    for r in records {
        turns[(r.total_turns as usize).min(max_turns)] += 1;
    }
    let buckets: Vec<(String, usize)> = turns
        .iter()
        .enumerate()
        .skip(1)
        .map(|(t, n)| (t.to_string(), *n))
        .collect();
    let _ = write!(
        s,
        "<div class=\"card\">{}</div>",
        histogram("Turns per trajectory", &buckets, "turns")
    );
    let tasks = by_task(records);
    let mut times: Vec<(String, f64, &str)> = tasks
        .iter()
        .map(|((_, _, id), rs)| {
            let n = rs.len() as f64;
            let mean_score = rs.iter().map(|r| r.score_or_zero()).sum::<f64>() / n;
            (
                id.clone(),
                rs.iter().map(|r| r.execution_time).sum::<f64>() / n,
                score_color(mean_score),
            )
        })
        .collect();
    times.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shown = times.len().min(40);
    let max_time = times.first().map_or(1.0, |t| t.1);
    let title = if times.len() > shown {
        format!("Time per task, s (slowest {shown} of {})", times.len())
    } else {
        "Time per task, s (colour: score)".to_owned()
    };
    let _ = write!(
        s,
        "<div class=\"card\">{}</div>",
        hbar_chart(&title, &times[..shown], max_time, &|v| format!("{v:.2}"))
    );
    s.push_str("</div>");

    // Errors.
    let e = &m.overall.errors;
    let _ = write!(
        s,
        "<h2>Errors</h2><table><tr><th>model errors</th><th>sandbox errors</th><th>budget exceeded</th><th>no answer (turn limit)</th><th>cell timeouts</th><th>not evaluable</th></tr><tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr></table>",
        e.model_errors,
        e.sandbox_errors,
        e.episode_timeouts,
        e.no_answer,
        e.cell_timeouts,
        esc(&if e.not_evaluable.is_empty() {
            "-".to_owned()
        } else {
            e.not_evaluable
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    );

    // Tasks.
    s.push_str("<h2>Tasks</h2><table><tr><th>task</th><th>score</th><th>turns</th><th>time s</th><th>ended</th><th>prediction</th><th>expected</th><th>figures</th></tr>");
    for ((_, _, id), rs) in &tasks {
        for r in rs {
            let label = if rs.len() > 1 {
                format!("{id} #{}", r.trajectory)
            } else {
                id.clone()
            };
            let figures: String = r
                .images
                .iter()
                .enumerate()
                .map(|(i, f)| format!("<a href=\"{}\">{}</a> ", esc(f), i + 1))
                .collect();
            let _ = write!(
                s,
                "<tr><td><a href=\"{}\">{}</a></td><td class=\"n\" style=\"color:{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.trajectory_file),
                esc(&label),
                score_color(r.score_or_zero()),
                opt(r.score),
                r.total_turns,
                r.execution_time,
                esc(r.end_reason.as_str()),
                esc(&short(r.prediction.as_deref().unwrap_or("(none)"), 80)),
                esc(&short(r.ground_truth.as_deref().unwrap_or(""), 80)),
                figures
            );
        }
    }
    s.push_str("</table><p class=\"muted\">Generated by <code>dsbox report</code>. Trajectories, figures and results.jsonl are in the run directory.</p></body></html>\n");
    s
}

/// Read a run, recompute its metrics, rewrite its summaries and write `report.md` and
/// `report.html`. Returns the metrics and the two paths.
pub fn write_reports(dir: &Path) -> Result<(RunManifest, RunMetrics, PathBuf, PathBuf), RunError> {
    let (manifest, records) = rundir::read_run(dir)?;
    let m = metrics::compute(&records, &manifest.tasks_per_suite(), manifest.k);
    let md = dir.join(REPORT_MD);
    let html_path = dir.join(REPORT_HTML);
    write_atomic(&md, markdown(&manifest, &records, &m).as_bytes())?;
    write_atomic(&html_path, html(&manifest, &records, &m).as_bytes())?;
    Ok((manifest, m, md, html_path))
}
