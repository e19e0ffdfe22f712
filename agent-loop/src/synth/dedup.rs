//! Near-duplicate queries: normalised token Jaccard similarity.
//!
//! A query's tokens are its lower-cased words (letters and digits; punctuation, quotes
//! and markdown are separators). Two queries are near-duplicates when the Jaccard
//! similarity of their token sets (|A ∩ B| / |A ∪ B|) reaches the threshold. Only queries
//! over the same data files are compared: the same question about two datasets is two
//! questions.

use std::collections::BTreeSet;

/// Default similarity at which a query counts as a near-duplicate.
pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// The normalised token set of a text.
pub fn tokens(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Jaccard similarity of two token sets (1 for two empty sets).
pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    inter as f64 / union as f64
}

/// Similarity of two texts.
pub fn similarity(a: &str, b: &str) -> f64 {
    jaccard(&tokens(a), &tokens(b))
}

/// A query taking part in deduplication.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub text: &'a str,
    /// Queries are compared only within a group (their data files).
    pub group: String,
}

/// For each candidate, in order: `None` when it is kept, or the earlier kept query it
/// near-duplicates and their similarity. The first of a set of near-duplicates is kept.
pub fn near_duplicates(candidates: &[Candidate<'_>], threshold: f64) -> Vec<Option<(String, f64)>> {
    let mut kept: Vec<(usize, BTreeSet<String>)> = Vec::new();
    let mut out = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        let t = tokens(c.text);
        let dup = kept
            .iter()
            .filter(|(k, _)| candidates[*k].group == c.group)
            .map(|(k, kt)| (*k, jaccard(&t, kt)))
            .filter(|(_, s)| *s >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match dup {
            Some((k, s)) => out.push(Some((candidates[k].id.to_owned(), s))),
            None => {
                kept.push((i, t));
                out.push(None);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_ignores_case_and_punctuation() {
        assert_eq!(
            similarity("What is the mean of `price`?", "what is the MEAN of price"),
            1.0
        );
        let s = similarity("What is the mean of price?", "What is the median of price?");
        assert!((s - 5.0 / 7.0).abs() < 1e-9, "{s}");
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("a b", "c d"), 0.0);
    }

    #[test]
    fn the_first_of_near_duplicates_is_kept_within_a_group() {
        let c = |id: &'static str, text: &'static str, group: &str| Candidate {
            id,
            text,
            group: group.into(),
        };
        let cands = vec![
            c(
                "q1",
                "What is the mean of price? Round to 2 decimals.",
                "a.csv",
            ),
            c(
                "q2",
                "What is the average of price? Round to 2 decimals.",
                "a.csv",
            ),
            c(
                "q3",
                "What is the mean of price? Round to 2 decimals.",
                "b.csv",
            ),
            c("q4", "How many rows have a missing price?", "a.csv"),
        ];
        let d = near_duplicates(&cands, 0.8);
        assert_eq!(d[0], None);
        let (of, s) = d[1].clone().unwrap();
        assert_eq!(of, "q1");
        assert!((0.8..1.0).contains(&s));
        assert_eq!(d[2], None, "other data: not a duplicate");
        assert_eq!(d[3], None);
        // A threshold above 1 keeps everything.
        assert!(near_duplicates(&cands, 1.01).iter().all(Option::is_none));
    }
}
