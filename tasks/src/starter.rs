//! The `starter` suite: dsbox's own small benchmark. Three CSV files are generated
//! deterministically (sales by region and month, an A/B experiment, a daily time series)
//! and written to a cache directory on demand; the questions' answers are computed here
//! from exactly the values written. It needs no download, so `dsbox demo` and the core of
//! every test suite run anywhere.
//!
//! Money is generated in integer cents and temperatures in tenths of a degree, so the
//! answers (sums, means, rates) are exact and do not depend on float summation order.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::error::{Result, TasksError};
use crate::suite::{LoadedSuite, SuiteDef};
use crate::task::{DataFile, DataKind, MetricSpec, Task, Track};

/// Bumped whenever the generated data or the questions change; the cache directory is
/// versioned so an old cache is never mistaken for the current data.
pub const STARTER_VERSION: u32 = 1;

/// splitmix64: tiny, fast, and fully specified, so the data is byte-identical on every
/// platform and every version of dsbox (a general-purpose RNG crate does not promise a
/// stable stream across releases).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
const REGIONS: [(&str, f64); 4] = [
    ("North", 1.0),
    ("South", 0.85),
    ("East", 1.15),
    ("West", 0.95),
];
const PRODUCTS: [(&str, f64, i64); 3] = [
    ("Widget", 120.0, 1999),
    ("Gadget", 80.0, 3450),
    ("Gizmo", 45.0, 5900),
];

struct SaleRow {
    month: usize,
    region: usize,
    product: usize,
    units: i64,
    price_cents: i64,
}

struct UserRow {
    treatment: bool,
    converted: bool,
    spend_cents: i64,
}

struct DayRow {
    month: usize,
    day: u32,
    weekday: u32, // 0 = Monday
    temp_tenths: i64,
    visits: i64,
}

/// The generated data.
struct Data {
    sales: Vec<SaleRow>,
    users: Vec<UserRow>,
    days: Vec<DayRow>,
}

fn generate() -> Data {
    let mut rng = SplitMix(0x0D5B_0C5E_ED00_0001);
    let mut sales = Vec::new();
    for month in 0..12 {
        let season = 1.0 + 0.25 * (2.0 * std::f64::consts::PI * (month as f64 - 3.0) / 12.0).sin();
        for (region, (_, region_mult)) in REGIONS.iter().enumerate() {
            for (product, (_, base, price)) in PRODUCTS.iter().enumerate() {
                let noise = 0.85 + 0.3 * rng.unit();
                let units = (base * region_mult * season * noise).round() as i64;
                let price_cents = price + rng.range(-100, 100);
                sales.push(SaleRow {
                    month,
                    region,
                    product,
                    units,
                    price_cents,
                });
            }
        }
    }
    let users = (0..600)
        .map(|_| {
            let treatment = rng.unit() < 0.5;
            let converted = rng.unit() < if treatment { 0.16 } else { 0.11 };
            let spend_cents = if converted {
                (if treatment { 4700 } else { 4200 }) + rng.range(-2000, 2000)
            } else {
                0
            };
            UserRow {
                treatment,
                converted,
                spend_cents,
            }
        })
        .collect();
    let mut days = Vec::new();
    let mut day_of_year = 0u32;
    for (month, &n) in MONTH_DAYS.iter().enumerate() {
        for day in 1..=n {
            // 2024-01-01 was a Monday.
            let weekday = day_of_year % 7;
            let temp = 12.0
                + 10.0 * (2.0 * std::f64::consts::PI * (day_of_year as f64 - 105.0) / 366.0).sin();
            let temp_tenths = (temp * 10.0).round() as i64 + rng.range(-30, 30);
            let weekend = if weekday >= 5 { 180 } else { 0 };
            let visits = 600 + (25 * temp_tenths) / 10 + weekend + rng.range(-80, 80);
            days.push(DayRow {
                month,
                day,
                weekday,
                temp_tenths,
                visits,
            });
            day_of_year += 1;
        }
    }
    Data { sales, users, days }
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

fn tenths(t: i64) -> String {
    let sign = if t < 0 { "-" } else { "" };
    format!("{sign}{}.{}", t.abs() / 10, t.abs() % 10)
}

impl Data {
    fn sales_csv(&self) -> String {
        let mut out = String::from("month,region,product,units,unit_price,revenue\n");
        for r in &self.sales {
            let _ = writeln!(
                out,
                "2024-{:02},{},{},{},{},{}",
                r.month + 1,
                REGIONS[r.region].0,
                PRODUCTS[r.product].0,
                r.units,
                cents(r.price_cents),
                cents(r.units * r.price_cents)
            );
        }
        out
    }

    fn experiment_csv(&self) -> String {
        let mut out = String::from("user_id,group,converted,spend\n");
        for (i, u) in self.users.iter().enumerate() {
            let group = if u.treatment { "treatment" } else { "control" };
            let _ = writeln!(
                out,
                "{},{group},{},{}",
                i + 1,
                u8::from(u.converted),
                cents(u.spend_cents)
            );
        }
        out
    }

    fn visits_csv(&self) -> String {
        let mut out = String::from("date,temperature_c,visits\n");
        for d in &self.days {
            let _ = writeln!(
                out,
                "2024-{:02}-{:02},{},{}",
                d.month + 1,
                d.day,
                tenths(d.temp_tenths),
                d.visits
            );
        }
        out
    }
}

/// The index of the first maximum (Python's `max` keeps the first of equal keys; Rust's
/// `max_by_key` the last).
fn argmax_first<K: Ord>(n: usize, key: impl Fn(usize) -> K) -> usize {
    (0..n).fold(0, |best, i| if key(i) > key(best) { i } else { best })
}

fn round2(x: f64) -> String {
    format!("{x:.2}")
}

fn pearson(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// One starter question before it becomes a [`Task`].
struct Question {
    slug: &'static str,
    file: &'static str,
    question: String,
    answer: Value,
    guideline: &'static str,
    metric: MetricSpec,
}

fn numeric() -> MetricSpec {
    MetricSpec::new("exact_match").with("tolerance", 0.01)
}

fn exact() -> MetricSpec {
    MetricSpec::new("exact_match").with("tolerance", 0.0)
}

fn pairs() -> MetricSpec {
    MetricSpec::new("list_match").with("tolerance", 0.01)
}

fn questions(d: &Data) -> Vec<Question> {
    let mut qs = Vec::new();
    // --- sales ---
    let total: i64 = d.sales.iter().map(|r| r.units * r.price_cents).sum();
    qs.push(Question {
        slug: "total-revenue",
        file: "sales.csv",
        question: "What was the total revenue over all months, regions and products? Round to two decimals.".into(),
        answer: json!(cents(total)),
        guideline: "A single number, e.g. 12345.67.",
        metric: numeric(),
    });
    let region_rev: Vec<i64> = (0..REGIONS.len())
        .map(|g| {
            d.sales
                .iter()
                .filter(|r| r.region == g)
                .map(|r| r.units * r.price_cents)
                .sum()
        })
        .collect();
    let best_region = argmax_first(REGIONS.len(), |g| region_rev[g]);
    qs.push(Question {
        slug: "top-region",
        file: "sales.csv",
        question: "Which region had the highest total revenue?".into(),
        answer: json!(REGIONS[best_region].0),
        guideline: "The region name exactly as it appears in the data.",
        metric: exact(),
    });
    let month_units: Vec<i64> = (0..12)
        .map(|m| {
            d.sales
                .iter()
                .filter(|r| r.month == m)
                .map(|r| r.units)
                .sum()
        })
        .collect();
    let best_month = argmax_first(12, |m| month_units[m]);
    qs.push(Question {
        slug: "peak-month",
        file: "sales.csv",
        question: "In which month were the most units sold in total (all regions and products)?"
            .into(),
        answer: json!(format!("2024-{:02}", best_month + 1)),
        guideline: "The month as YYYY-MM.",
        metric: exact(),
    });
    let mean_rev = |p: usize| {
        let rows: Vec<i64> = d
            .sales
            .iter()
            .filter(|r| r.product == p)
            .map(|r| r.units * r.price_cents)
            .collect();
        rows.iter().sum::<i64>() as f64 / rows.len() as f64 / 100.0
    };
    qs.push(Question {
        slug: "product-mean-revenue",
        file: "sales.csv",
        question: "What is the mean revenue per row for the Widget product and for the Gadget product? Round each to two decimals.".into(),
        answer: json!(format!("[['widget_mean_revenue', '{}'], ['gadget_mean_revenue', '{}']]", round2(mean_rev(0)), round2(mean_rev(1)))),
        guideline: "@widget_mean_revenue[value] @gadget_mean_revenue[value], each value a number rounded to two decimals.",
        metric: pairs(),
    });
    let avg_region = region_rev.iter().sum::<i64>() as f64 / REGIONS.len() as f64;
    let above: Vec<&str> = (0..REGIONS.len())
        .filter(|&g| region_rev[g] as f64 > avg_region)
        .map(|g| REGIONS[g].0)
        .collect();
    qs.push(Question {
        slug: "regions-above-average",
        file: "sales.csv",
        question: "Which regions had a total revenue above the average total revenue of all regions?".into(),
        answer: json!(above),
        guideline: "A Python list of region names, e.g. ['North', 'South'] (order does not matter).",
        metric: exact(),
    });
    // --- experiment ---
    let group = |t: bool| d.users.iter().filter(move |u| u.treatment == t);
    let rate = |t: bool| {
        let n = group(t).count() as f64;
        group(t).filter(|u| u.converted).count() as f64 / n
    };
    qs.push(Question {
        slug: "conversion-lift",
        file: "experiment.csv",
        question: "By how many percentage points does the conversion rate of the treatment group exceed that of the control group? Round to two decimals.".into(),
        answer: json!(round2(100.0 * (rate(true) - rate(false)))),
        guideline: "A single number of percentage points, e.g. 3.25.",
        metric: numeric(),
    });
    let spend = |t: bool| {
        let conv: Vec<i64> = group(t)
            .filter(|u| u.converted)
            .map(|u| u.spend_cents)
            .collect();
        conv.iter().sum::<i64>() as f64 / conv.len() as f64 / 100.0
    };
    qs.push(Question {
        slug: "spend-by-group",
        file: "experiment.csv",
        question: "Among users who converted, what is the mean spend in the treatment group and in the control group? Round each to two decimals.".into(),
        answer: json!(format!("[['treatment_mean_spend', '{}'], ['control_mean_spend', '{}']]", round2(spend(true)), round2(spend(false)))),
        guideline: "@treatment_mean_spend[value] @control_mean_spend[value], each value a number rounded to two decimals.",
        metric: pairs(),
    });
    let higher = if rate(true) > rate(false) { "A" } else { "B" };
    qs.push(Question {
        slug: "higher-conversion",
        file: "experiment.csv",
        question: "Which group has the higher conversion rate? A. treatment B. control".into(),
        answer: json!(higher),
        guideline: "The letter of the option only (A or B).",
        metric: exact(),
    });
    // --- visits ---
    let peak_day = &d.days[argmax_first(d.days.len(), |i| d.days[i].visits)];
    let peak = format!("2024-{:02}-{:02}", peak_day.month + 1, peak_day.day);
    qs.push(Question {
        slug: "peak-day",
        file: "visits.csv",
        question: "On which date were visits highest?".into(),
        answer: json!(peak),
        guideline: "The date as YYYY-MM-DD.",
        metric: exact(),
    });
    let temps: Vec<f64> = d.days.iter().map(|x| x.temp_tenths as f64 / 10.0).collect();
    let visits: Vec<f64> = d.days.iter().map(|x| x.visits as f64).collect();
    qs.push(Question {
        slug: "temperature-correlation",
        file: "visits.csv",
        question: "What is the Pearson correlation coefficient between temperature_c and visits? Round to two decimals.".into(),
        answer: json!(round2(pearson(&temps, &visits))),
        guideline: "A single number between -1 and 1.",
        metric: numeric(),
    });
    let mean_visits = |weekend: bool| {
        let v: Vec<i64> = d
            .days
            .iter()
            .filter(|x| (x.weekday >= 5) == weekend)
            .map(|x| x.visits)
            .collect();
        v.iter().sum::<i64>() as f64 / v.len() as f64
    };
    qs.push(Question {
        slug: "weekend-visits",
        file: "visits.csv",
        question: "What are the mean daily visits on weekends (Saturday and Sunday) and on weekdays? Round each to two decimals.".into(),
        answer: json!(format!("[['weekend_mean_visits', '{}'], ['weekday_mean_visits', '{}']]", round2(mean_visits(true)), round2(mean_visits(false)))),
        guideline: "@weekend_mean_visits[value] @weekday_mean_visits[value], each value a number rounded to two decimals.",
        metric: pairs(),
    });
    let busy = d.days.iter().filter(|x| x.visits > 1000).count();
    qs.push(Question {
        slug: "busy-days",
        file: "visits.csv",
        question: "On how many days were there more than 1000 visits?".into(),
        answer: json!(busy.to_string()),
        guideline: "A whole number.",
        metric: numeric(),
    });
    qs
}

const FILES: [(&str, &str); 3] = [
    (
        "sales.csv",
        "sales.csv: monthly sales in 2024 by region (North, South, East, West) and product (Widget, Gadget, Gizmo). Columns: month (YYYY-MM), region, product, units, unit_price, revenue (units x unit_price).",
    ),
    (
        "experiment.csv",
        "experiment.csv: an A/B test with 600 users. Columns: user_id, group (treatment or control), converted (1 if the user bought), spend (amount spent; 0 when not converted).",
    ),
    (
        "visits.csv",
        "visits.csv: daily website visits in 2024. Columns: date (YYYY-MM-DD), temperature_c (daily mean temperature), visits.",
    ),
];

/// The starter data directory under `cache_dir` (versioned).
pub fn data_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("v{STARTER_VERSION}"))
}

/// Write `contents` to `path` unless it already holds exactly that; atomically (temp file
/// + rename) so concurrent readers never see a half-written file.
fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Generate the starter files into `cache_dir` (if not already there) and return the
/// host directory bound at `/data`.
pub fn materialize(cache_dir: &Path) -> Result<PathBuf> {
    write_data(cache_dir, &generate())
}

fn write_data(cache_dir: &Path, data: &Data) -> Result<PathBuf> {
    let root = data_dir(cache_dir);
    let dir = root.join("starter");
    std::fs::create_dir_all(&dir).map_err(|source| TasksError::StarterData {
        path: dir.clone(),
        source,
    })?;
    for (name, contents) in [
        ("sales.csv", data.sales_csv()),
        ("experiment.csv", data.experiment_csv()),
        ("visits.csv", data.visits_csv()),
    ] {
        let path = dir.join(name);
        write_if_changed(&path, &contents)
            .map_err(|source| TasksError::StarterData { path, source })?;
    }
    Ok(root)
}

/// Load the starter suite: write its data into `cache_dir` and build its tasks.
pub fn load(def: SuiteDef, cache_dir: &Path) -> Result<LoadedSuite> {
    let data = generate();
    let data_dir = write_data(cache_dir, &data)?;
    let tasks = questions(&data)
        .into_iter()
        .map(|q| {
            let path = format!("/data/starter/{}", q.file);
            let context = FILES
                .iter()
                .find(|(f, _)| *f == q.file)
                .map_or("", |(_, c)| c)
                .to_owned();
            let mut metadata = Map::new();
            metadata.insert("dataset".into(), json!(q.file));
            if q.guideline.starts_with('@') {
                metadata.insert("format".into(), json!(q.guideline));
            }
            Task {
                id: format!("{}/{}", def.name, q.slug),
                suite: def.name.clone(),
                track: Track::Analysis,
                question: q.question,
                context,
                data: vec![DataFile {
                    host: Some(data_dir.join("starter").join(q.file)),
                    path,
                    kind: DataKind::File,
                }],
                submission: None,
                answer: Some(q.answer),
                answer_guideline: Some(q.guideline.to_owned()),
                metric: q.metric,
                metadata,
            }
        })
        .collect();
    Ok(LoadedSuite {
        def,
        tasks,
        problems: Vec::new(),
        data_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.sales_csv(), b.sales_csv());
        assert_eq!(a.experiment_csv(), b.experiment_csv());
        assert_eq!(a.visits_csv(), b.visits_csv());
        assert_eq!(a.visits_csv().lines().count(), 367);
        assert_eq!(a.sales_csv().lines().count(), 145);
    }

    #[test]
    fn ties_go_to_the_first_maximum_as_in_python() {
        let v = [3, 5, 5, 1];
        assert_eq!(argmax_first(v.len(), |i| v[i]), 1);
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(cents(5), "0.05");
        assert_eq!(cents(123_456), "1234.56");
        assert_eq!(tenths(-5), "-0.5");
        assert_eq!(tenths(123), "12.3");
    }
}
