//! Medal table at each size boundary and percentile with ties, for boards where higher
//! and where lower is better.

use dsbox_tasks::Medal;
use dsbox_tasks::leaderboard::{BoardStats, LeaderboardResult, MedalCutoffs, medal_cutoffs, place};

fn cut(gold: usize, silver: usize, bronze: usize) -> MedalCutoffs {
    MedalCutoffs {
        gold,
        silver,
        bronze,
    }
}

#[test]
fn cutoffs_at_the_table_boundaries() {
    // T < 100: 10% / 20% / 40%, rounded up.
    assert_eq!(medal_cutoffs(99), cut(10, 20, 40));
    // 100..=249: gold is a flat 10.
    assert_eq!(medal_cutoffs(100), cut(10, 20, 40));
    assert_eq!(medal_cutoffs(249), cut(10, 50, 100));
    // 250..=999: gold 10 + 0.2%, silver 50, bronze 100.
    assert_eq!(medal_cutoffs(250), cut(11, 50, 100));
    assert_eq!(medal_cutoffs(999), cut(12, 50, 100));
    // >= 1000: gold 10 + 0.2%, silver 5%, bronze 10%.
    assert_eq!(medal_cutoffs(1000), cut(12, 50, 100));
    assert_eq!(medal_cutoffs(1001), cut(13, 51, 101));
    // Small boards: T = 5 → 1, 1, 2.
    assert_eq!(medal_cutoffs(5), cut(1, 1, 2));
}

/// A board of `n` distinct scores, best first.
fn board(n: usize, higher_is_better: bool) -> Vec<f64> {
    let mut b: Vec<f64> = (1..=n).map(|i| i as f64).collect();
    if higher_is_better {
        b.reverse();
    }
    b
}

/// The score that lands exactly at `rank` (tying the entry there; ties take the best rank).
fn score_at_rank(b: &[f64], rank: usize) -> f64 {
    b[rank - 1]
}

/// A score just behind the entry at `rank` (so its rank is `rank + 1`).
fn score_after_rank(b: &[f64], rank: usize, higher_is_better: bool) -> f64 {
    if higher_is_better {
        b[rank - 1] - 0.5
    } else {
        b[rank - 1] + 0.5
    }
}

#[test]
fn medals_flip_exactly_at_the_cutoffs_for_each_table_row() {
    for higher in [true, false] {
        for t in [99usize, 100, 249, 250, 999, 1000] {
            let b = board(t - 1, higher);
            let c = medal_cutoffs(t);
            for (rank, medal, next) in [
                (c.gold, Medal::Gold, Medal::Silver),
                (c.silver, Medal::Silver, Medal::Bronze),
                (c.bronze, Medal::Bronze, Medal::None),
            ] {
                let at = place(&b, score_at_rank(&b, rank));
                assert_eq!(
                    (at.rank, at.total, at.medal),
                    (rank, t, medal),
                    "T={t} higher={higher} rank {rank}"
                );
                let after = place(&b, score_after_rank(&b, rank, higher));
                assert_eq!(after.rank, rank + 1);
                // One place behind a cut-off is the next medal (cut-offs differ at these T).
                assert_eq!(after.medal, next, "T={t} higher={higher} after rank {rank}");
                assert_eq!(at.higher_is_better, higher);
            }
        }
    }
}

#[test]
fn the_three_boundaries_change_the_gold_cutoff() {
    // Rank 11 is silver at T=249 but gold at T=250 (gold 10 → 11).
    let b249 = board(248, true);
    assert_eq!(place(&b249, score_at_rank(&b249, 11)).medal, Medal::Silver);
    let b250 = board(249, true);
    assert_eq!(place(&b250, score_at_rank(&b250, 11)).medal, Medal::Gold);
    // Rank 40 is bronze at T=99 (bronze 40), and rank 41 is none; at T=100 the same.
    let b99 = board(98, false);
    assert_eq!(place(&b99, score_at_rank(&b99, 40)).medal, Medal::Bronze);
    assert_eq!(place(&b99, score_at_rank(&b99, 41)).medal, Medal::None);
    // Rank 101 is none at T=1000 but bronze at T=1001.
    let b1000 = board(999, true);
    assert_eq!(place(&b1000, score_at_rank(&b1000, 101)).medal, Medal::None);
    let b1001 = board(1000, true);
    assert_eq!(
        place(&b1001, score_at_rank(&b1001, 101)).medal,
        Medal::Bronze
    );
}

#[test]
fn percentile_and_median_with_ties_higher_is_better() {
    let b = [10.0, 9.0, 9.0, 9.0, 5.0];
    let p = place(&b, 9.0);
    assert_eq!(p.rank, 2); // one strictly better, ties take the best rank
    assert_eq!(p.percentile, 100.0 * (1.0 + 0.5 * 3.0) / 5.0);
    assert!(!p.above_median); // equal to the median is not above it
    assert!(place(&b, 9.5).above_median);
    assert_eq!(place(&b, 11.0).percentile, 100.0);
    assert_eq!(place(&b, 11.0).rank, 1);
    assert_eq!(place(&b, 1.0).percentile, 0.0);
    assert_eq!(place(&b, 1.0).rank, 6);
    assert_eq!(place(&b, 10.0).percentile, 100.0 * (4.0 + 0.5) / 5.0);
}

#[test]
fn percentile_and_median_with_ties_lower_is_better() {
    let b = [0.1, 0.2, 0.2, 0.3];
    let p = place(&b, 0.2);
    assert!(!p.higher_is_better);
    assert_eq!(p.rank, 2);
    assert_eq!(p.percentile, 100.0 * (1.0 + 0.5 * 2.0) / 4.0);
    // Median of an even board: mean of the middle two (0.2); equal is not above.
    assert!(!p.above_median);
    assert!(place(&b, 0.19).above_median);
    assert!(!place(&b, 0.21).above_median);
    assert_eq!(place(&b, 0.05).rank, 1);
    assert_eq!(place(&b, 0.05).medal, Medal::Gold);
}

#[test]
fn flat_and_empty_boards() {
    // board[0] > board[-1] is false on a flat board: treated as lower-is-better.
    let flat = [0.0, 0.0, 0.0];
    let p = place(&flat, 0.0);
    assert!(!p.higher_is_better);
    assert_eq!((p.rank, p.percentile), (1, 50.0));
    assert_eq!(place(&flat, 0.5).percentile, 0.0);
    // The reference's rule for an empty board.
    let e = place(&[], 3.0);
    assert_eq!(
        (e.rank, e.medal, e.percentile, e.above_median),
        (1, Medal::Gold, 100.0, true)
    );
}

#[test]
fn private_board_is_the_headline_when_present() {
    let stats = BoardStats {
        public_scores: vec![0.9, 0.8, 0.7],
        private_scores: vec![0.95, 0.85, 0.6],
        public_mean: 0.8,
        public_median: 0.8,
        private_mean: 0.8,
        private_median: 0.85,
        total_submissions: 3,
    };
    let r = LeaderboardResult::new("c", 0.86, "given", &stats).unwrap();
    assert_eq!(r.board, "private");
    assert_eq!(r.primary().unwrap().rank, 2);
    assert_eq!(r.public.as_ref().unwrap().rank, 2);
    let public_only = BoardStats {
        private_scores: vec![],
        ..stats.clone()
    };
    assert_eq!(
        LeaderboardResult::new("c", 0.86, "given", &public_only)
            .unwrap()
            .board,
        "public"
    );
    let none = BoardStats {
        private_scores: vec![],
        public_scores: vec![],
        ..stats
    };
    assert!(LeaderboardResult::new("c", 0.86, "given", &none).is_none());
}
