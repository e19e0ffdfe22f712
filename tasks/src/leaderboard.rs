//! DSPredict scoring against the offline Kaggle leaderboards: rank, medal, percentile and
//! above-median, exactly as the reference computes them from a board of scores (best first).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TasksError};

/// One competition's offline board, as in `leaderboard/*_leaderboard_stats_<date>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardStats {
    /// Public leaderboard scores, best first.
    #[serde(default)]
    pub public_scores: Vec<f64>,
    /// Private leaderboard scores, best first (empty when the competition has none).
    #[serde(default)]
    pub private_scores: Vec<f64>,
    #[serde(default)]
    pub public_mean: f64,
    #[serde(default)]
    pub public_median: f64,
    #[serde(default)]
    pub private_mean: f64,
    #[serde(default)]
    pub private_median: f64,
    #[serde(default)]
    pub total_submissions: u64,
}

/// All boards of one leaderboard file, by competition name.
#[derive(Debug, Clone, Default)]
pub struct Leaderboards {
    pub path: PathBuf,
    pub boards: BTreeMap<String, BoardStats>,
}

impl Leaderboards {
    /// Read a leaderboard stats file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TasksError::Io {
            path: path.to_owned(),
            source,
        })?;
        let boards: BTreeMap<String, BoardStats> =
            serde_json::from_str(&text).map_err(|e| TasksError::malformed_json(path, &e))?;
        Ok(Leaderboards {
            path: path.to_owned(),
            boards,
        })
    }

    /// Like [`Leaderboards::load`], but each file is read once per process: scoring a suite
    /// asks for the same multi-megabyte file once per task.
    pub fn cached(path: &Path) -> Result<Arc<Self>> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Leaderboards>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
            return Ok(hit.clone());
        }
        let loaded = Arc::new(Self::load(path)?);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), loaded.clone());
        Ok(loaded)
    }

    /// The newest `<name>_leaderboard_stats_*.json` in `dir` (dates sort as text).
    pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
        let prefix = format!("{name}_leaderboard_stats_");
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
            })
            .collect();
        found.sort();
        found.pop()
    }
}

/// A Kaggle medal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Medal {
    Gold,
    Silver,
    Bronze,
    None,
}

impl Medal {
    pub fn as_str(self) -> &'static str {
        match self {
            Medal::Gold => "gold",
            Medal::Silver => "silver",
            Medal::Bronze => "bronze",
            Medal::None => "none",
        }
    }
}

/// The last rank that earns each medal, for a board of `total` entries (ours included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MedalCutoffs {
    pub gold: usize,
    pub silver: usize,
    pub bronze: usize,
}

/// `ceil(num/den * t)` in exact integer arithmetic. The reference computes
/// `math.ceil(0.1 * t)` in floating point, which is one too high whenever the product
/// rounds up past an integer (e.g. t = 30: 0.1 * 30 = 3.0000000000000004 → 4); the spec's
/// table means the mathematical ceiling, which this gives.
fn ceil_frac(num: usize, den: usize, t: usize) -> usize {
    (num * t).div_ceil(den)
}

/// Kaggle's medal table, by the number of teams T (ours included):
///
/// | T        | gold            | silver      | bronze      |
/// |----------|-----------------|-------------|-------------|
/// | < 100    | ceil(0.1T)      | ceil(0.2T)  | ceil(0.4T)  |
/// | 100-249  | 10              | ceil(0.2T)  | ceil(0.4T)  |
/// | 250-999  | 10 + ceil(0.002T) | 50        | 100         |
/// | >= 1000  | 10 + ceil(0.002T) | ceil(0.05T) | ceil(0.1T) |
///
/// Each cut-off is capped at T, as the reference does.
pub fn medal_cutoffs(total: usize) -> MedalCutoffs {
    let (gold, silver, bronze) = if total < 100 {
        (
            ceil_frac(1, 10, total),
            ceil_frac(1, 5, total),
            ceil_frac(2, 5, total),
        )
    } else if total < 250 {
        (10, ceil_frac(1, 5, total), ceil_frac(2, 5, total))
    } else if total < 1000 {
        (10 + ceil_frac(1, 500, total), 50, 100)
    } else {
        (
            10 + ceil_frac(1, 500, total),
            ceil_frac(1, 20, total),
            ceil_frac(1, 10, total),
        )
    };
    MedalCutoffs {
        gold: gold.min(total),
        silver: silver.min(total),
        bronze: bronze.min(total),
    }
}

/// Where a score lands on one board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// 1-based; ties take the best rank.
    pub rank: usize,
    /// Board size with our entry (T = N + 1).
    pub total: usize,
    pub medal: Medal,
    /// 100 × (entries worse + ½ × entries equal) / N.
    pub percentile: f64,
    /// Strictly better than the board's median.
    pub above_median: bool,
    pub higher_is_better: bool,
}

/// Median of the scores (mean of the middle two for an even count).
pub fn median(scores: &[f64]) -> f64 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Place `score` on `board` (best first). Higher is better iff `board[0] > board[-1]`.
/// An empty board gives rank 1, gold, percentile 100, above median (the reference's rule).
pub fn place(board: &[f64], score: f64) -> Placement {
    let (Some(&first), Some(&last)) = (board.first(), board.last()) else {
        return Placement {
            rank: 1,
            total: 1,
            medal: Medal::Gold,
            percentile: 100.0,
            above_median: true,
            higher_is_better: true,
        };
    };
    let higher_is_better = first > last;
    let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };
    // Inserting the score, sorting best first and taking the first index of it is the
    // same as counting the entries strictly better than it.
    let strictly_better = board.iter().filter(|&&s| better(s, score)).count();
    let worse = board.iter().filter(|&&s| better(score, s)).count();
    let equal = board.iter().filter(|&&s| s == score).count();
    let rank = strictly_better + 1;
    let total = board.len() + 1;
    let cut = medal_cutoffs(total);
    let medal = if rank <= cut.gold {
        Medal::Gold
    } else if rank <= cut.silver {
        Medal::Silver
    } else if rank <= cut.bronze {
        Medal::Bronze
    } else {
        Medal::None
    };
    let percentile = 100.0 * (worse as f64 + 0.5 * equal as f64) / board.len() as f64;
    let above_median = better(score, median(board));
    Placement {
        rank,
        total,
        medal,
        percentile,
        above_median,
        higher_is_better,
    }
}

/// A competition score placed on the offline boards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardResult {
    pub competition: String,
    /// The competition-metric score that was placed.
    pub score: f64,
    /// `"given"` (the prediction was the score) or `"local"` (computed from a submission).
    pub source: String,
    /// Which board the headline figures come from: `"private"` when the competition has a
    /// private board (Kaggle's final standings), else `"public"`.
    pub board: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public: Option<Placement>,
}

impl LeaderboardResult {
    /// Place `score` on every non-empty board of `stats`. `None` when both are empty.
    pub fn new(competition: &str, score: f64, source: &str, stats: &BoardStats) -> Option<Self> {
        let private =
            (!stats.private_scores.is_empty()).then(|| place(&stats.private_scores, score));
        let public = (!stats.public_scores.is_empty()).then(|| place(&stats.public_scores, score));
        let board = if private.is_some() {
            "private"
        } else if public.is_some() {
            "public"
        } else {
            return None;
        };
        Some(LeaderboardResult {
            competition: competition.to_owned(),
            score,
            source: source.to_owned(),
            board: board.to_owned(),
            private,
            public,
        })
    }

    /// The headline placement (private board when there is one). Always `Some` for a
    /// result built by [`LeaderboardResult::new`].
    pub fn primary(&self) -> Option<&Placement> {
        self.private.as_ref().or(self.public.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_ceiling_where_floats_would_round_up() {
        // 0.1 * 30 = 3.0000000000000004 in floating point; the table means 3.
        assert_eq!(
            medal_cutoffs(30),
            MedalCutoffs {
                gold: 3,
                silver: 6,
                bronze: 12
            }
        );
    }

    #[test]
    fn cutoffs_never_exceed_the_board() {
        assert_eq!(
            medal_cutoffs(1),
            MedalCutoffs {
                gold: 1,
                silver: 1,
                bronze: 1
            }
        );
        for t in 1..3000 {
            let c = medal_cutoffs(t);
            assert!(
                c.gold <= c.silver && c.silver <= c.bronze && c.bronze <= t,
                "T={t}: {c:?}"
            );
        }
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
