//! `cargo xtask bench-table`: the tables of `BENCHMARKS.md`, generated from
//! the estimates criterion wrote under `target/criterion`, so that the
//! document is regenerated from a run and never typed by hand.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};

/// What the command was asked for.
pub struct Request {
    /// The criterion group, such as `boundary`.
    pub group: String,
    /// The columns, in order; all of the group's functions when empty.
    pub columns: Vec<String>,
    /// Ratios to add, as (numerator, denominator) function names.
    pub ratios: Vec<(String, String)>,
}

impl Request {
    /// Parses `GROUP [--columns a,b,...] [--ratio a/b]...`.
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut args = args.iter();
        let group = args
            .next()
            .context("bench-table needs a criterion group, such as `boundary`")?
            .clone();
        let mut request = Self {
            group,
            columns: Vec::new(),
            ratios: Vec::new(),
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--columns" => request.columns = value.split(',').map(str::to_owned).collect(),
                "--ratio" => {
                    let (a, b) = value
                        .split_once('/')
                        .with_context(|| format!("--ratio {value:?} is not `a/b`"))?;
                    request.ratios.push((a.to_owned(), b.to_owned()));
                }
                other => bail!("unknown flag {other:?} (expected --columns or --ratio)"),
            }
        }
        Ok(request)
    }
}

/// The median time in nanoseconds of each (function, input) of the group;
/// the input is `-` for a function without inputs.
fn medians(group: &Path) -> anyhow::Result<BTreeMap<(String, String), f64>> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(group).with_context(|| {
        format!(
            "no criterion results in {}; run `cargo bench` first",
            group.display()
        )
    })?;
    for function in entries {
        let function = function?.path();
        let name = file_name(&function);
        if name == "report" || !function.is_dir() {
            continue;
        }
        if function.join("new").is_dir() {
            out.insert((name, "-".to_owned()), median(&function)?);
            continue;
        }
        for input in std::fs::read_dir(&function)? {
            let input = input?.path();
            if input.join("new").is_dir() {
                out.insert((name.clone(), file_name(&input)), median(&input)?);
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn median(bench: &Path) -> anyhow::Result<f64> {
    let path = bench.join("new/estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    json["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{} has no median", path.display()))
}

/// A time for a table: three significant digits in a fitting unit.
fn time(ns: f64) -> String {
    let (value, unit) = if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

/// An input for a table: a byte size in B / KiB when it is a number.
fn input_label(input: &str) -> String {
    match input.parse::<u64>() {
        Ok(n) if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
        Ok(n) => format!("{n} B"),
        Err(_) => input.to_owned(),
    }
}

/// The markdown tables for `request` from the results under `criterion`.
pub fn render(criterion: &Path, request: &Request) -> anyhow::Result<String> {
    let results = medians(&criterion.join(&request.group))?;
    let mut inputs: Vec<String> = results.keys().map(|(_, i)| i.clone()).collect();
    inputs.sort_by_key(|i| (i.parse::<u64>().unwrap_or(u64::MAX), i.clone()));
    inputs.dedup();
    let columns = if request.columns.is_empty() {
        let mut all: Vec<String> = results.keys().map(|(f, _)| f.clone()).collect();
        all.dedup();
        all
    } else {
        request.columns.clone()
    };
    for column in columns
        .iter()
        .chain(request.ratios.iter().flat_map(|(a, b)| [a, b]))
    {
        if !results.keys().any(|(f, _)| f == column) {
            bail!("group {} has no benchmark {column:?}", request.group);
        }
    }
    let get = |f: &str, i: &str| results.get(&(f.to_owned(), i.to_owned())).copied();

    let mut out = String::new();
    out.push_str(&format!("| input | {} |\n", columns.join(" | ")));
    out.push_str(&format!("|---:|{}\n", "---:|".repeat(columns.len())));
    for input in &inputs {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| get(c, input).map_or_else(|| "–".to_owned(), time))
            .collect();
        out.push_str(&format!(
            "| {} | {} |\n",
            input_label(input),
            cells.join(" | ")
        ));
    }
    if !request.ratios.is_empty() {
        let names: Vec<String> = request
            .ratios
            .iter()
            .map(|(a, b)| format!("{a} / {b}"))
            .collect();
        out.push_str(&format!("\n| input | {} |\n", names.join(" | ")));
        out.push_str(&format!("|---:|{}\n", "---:|".repeat(names.len())));
        for input in &inputs {
            let cells: Vec<String> = request
                .ratios
                .iter()
                .map(|(a, b)| match (get(a, input), get(b, input)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".to_owned(),
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} |\n",
                input_label(input),
                cells.join(" | ")
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, bench: &str, median: f64) {
        let path = dir.join(bench).join("new");
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(
            path.join("estimates.json"),
            format!(r#"{{"median":{{"point_estimate":{median}}}}}"#),
        )
        .expect("write");
    }

    #[test]
    fn renders_times_and_ratios_by_input() {
        let dir = std::env::temp_dir().join(format!("xtask-table-{}", std::process::id()));
        let group = dir.join("g");
        write(&group, "a/64", 1500.0);
        write(&group, "b/64", 1000.0);
        write(&group, "a/4096", 2_000_000.0);
        write(&group, "b/4096", 40.0);
        let request = Request::parse(&[
            "g".into(),
            "--columns".into(),
            "b,a".into(),
            "--ratio".into(),
            "a/b".into(),
        ])
        .expect("parse");
        let table = render(&dir, &request).expect("render");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            table,
            "| input | b | a |\n|---:|---:|---:|\n| 64 B | 1.00 µs | 1.50 µs |\n| 4 KiB | 40.0 ns | 2.00 ms |\n\
             \n| input | a / b |\n|---:|---:|\n| 64 B | 1.50 |\n| 4 KiB | 50000.00 |\n"
        );
        let missing = Request::parse(&["g".into(), "--ratio".into(), "a/c".into()]).expect("parse");
        let err = render(&dir, &missing).unwrap_err();
        assert!(err.to_string().contains("no criterion results"), "{err}");
    }
}
