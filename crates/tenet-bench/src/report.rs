//! What a benchmark scenario reports, and the report `tenet bench all`
//! writes: text on the terminal, JSON, and a markdown section with SVG
//! plots for `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

/// One scenario's results.
pub struct Section {
    /// Short name: the `tenet bench NAME` subcommand.
    pub name: &'static str,
    /// Heading in the report.
    pub title: String,
    /// The command that measures it.
    pub command: String,
    /// Markdown: tables and the sentences that read them.
    pub markdown: String,
    /// The same figures, machine-readable.
    pub json: Value,
    /// Bar charts, embedded as SVG files next to the report.
    pub plots: Vec<Plot>,
}

/// A horizontal bar chart.
pub struct Plot {
    /// File stem (written as `STEM.svg` in the report's image folder).
    pub file: String,
    /// Title over the chart.
    pub title: String,
    /// Unit of the values, e.g. "us" or "exchanges/s".
    pub unit: String,
    /// (label, value) pairs, drawn top to bottom.
    pub bars: Vec<(String, f64)>,
}

impl Section {
    /// The text shown on the terminal: the markdown as it is.
    pub fn print(&self) {
        println!("\n## {}\n\n{}", self.title, self.markdown);
    }

    /// The JSON form: name, title, command and the figures.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "title": self.title,
            "command": self.command,
            "results": self.json,
        })
    }
}

/// Prints `sections` as text, or as one JSON document.
pub fn emit(sections: &[Section], as_json: bool) {
    if as_json {
        let all: Vec<Value> = sections.iter().map(Section::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(all)).expect("JSON values serialize")
        );
    } else {
        for s in sections {
            s.print();
        }
    }
}

/// A progress bar on stderr for a long run of `len` steps; hidden when
/// stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// `a` as a multiple of `b`, formatted like `1.23x`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders a horizontal bar chart as a standalone SVG document.
pub fn svg(p: &Plot) -> String {
    let (label_w, bar_w, row_h, top) = (300.0, 360.0, 26.0, 40.0);
    let max = p.bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
    let height = top + row_h * p.bars.len() as f64 + 16.0;
    let width = label_w + bar_w + 120.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{} ({})</text>"#,
        escape(&p.title),
        escape(&p.unit)
    );
    for (i, (label, v)) in p.bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let w = if max > 0.0 { bar_w * v / max } else { 0.0 };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + 15.0,
            escape(label)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{label_w}" y="{}" width="{w:.1}" height="{}" fill="#4a7ab5"/>"##,
            y + 3.0,
            row_h - 8.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            label_w + w + 6.0,
            y + 15.0,
            fmt_value(*v)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the markdown report to `path` with its plots under
/// `PATH_DIR/benchmarks/`: the machine, then each section with its command.
pub fn write_report(path: &Path, sections: &[Section]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let img = dir.join("benchmarks");
    std::fs::create_dir_all(&img).with_context(|| format!("creating {}", img.display()))?;
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `tenet bench all --report docs/benchmarks.md`. Every \
         scenario runs ours and its baseline side by side, in one process, at \
         the same moment; the ratios are the result. Absolute times on a shared \
         machine are noise. See also: [the simulated card's model](benchmarks-model.md), \
         [criterion micro-benchmarks](microbenchmarks.md), and \
         [notes from earlier measurements](benchmarks-notes.md).\n\n",
    );
    let _ = writeln!(md, "## Machine\n\n{}\n", machine());
    for s in sections {
        let _ = writeln!(
            md,
            "## {}\n\nMeasured with `{}`.\n\n{}\n",
            s.title, s.command, s.markdown
        );
        for p in &s.plots {
            let file = format!("{}.svg", p.file);
            std::fs::write(img.join(&file), svg(p))
                .with_context(|| format!("writing {}", img.join(&file).display()))?;
            let _ = writeln!(md, "![{}](benchmarks/{file})\n", escape(&p.title));
        }
    }
    std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// CPU model, core count, memory, kernel and the date, as one line each.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{} GiB", kb / 1024 / 1024),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("- CPU: {cpu}, {cores} cores\n- memory: {mem}\n- Linux {kernel}\n- date: {date}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_and_labels_are_escaped() {
        let p = Plot {
            file: "x".into(),
            title: "a < b".into(),
            unit: "us".into(),
            bars: vec![("ours".into(), 50.0), ("base & co".into(), 100.0)],
        };
        let s = svg(&p);
        assert!(s.contains("a &lt; b"));
        assert!(s.contains("base &amp; co"));
        assert!(
            s.contains(r#"width="180.0""#),
            "half of the 360 px bar: {s}"
        );
        assert!(s.contains(r#"width="360.0""#));
    }

    #[test]
    fn a_report_embeds_each_plot_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("benchmarks.md");
        let s = Section {
            name: "t",
            title: "Test".into(),
            command: "tenet bench t".into(),
            markdown: "| a | b |\n|---|---|\n| 1 | 2 |".into(),
            json: json!({"a": 1}),
            plots: vec![Plot {
                file: "t-latency".into(),
                title: "latency".into(),
                unit: "us".into(),
                bars: vec![("ours".into(), 1.0)],
            }],
        };
        write_report(&path, &[s]).unwrap();
        let md = std::fs::read_to_string(&path).unwrap();
        assert!(md.contains("## Test"));
        assert!(md.contains("`tenet bench t`"));
        assert!(md.contains("![latency](benchmarks/t-latency.svg)"));
        assert!(dir.path().join("benchmarks/t-latency.svg").exists());
        assert_eq!(ratio(3.0, 2.0), "1.50x");
    }
}
