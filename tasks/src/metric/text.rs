//! The reference's text and number rules: exact_match, list_match, dabstep and
//! fuzzy_exact_match. Each function is pure and follows the reference step by step;
//! the comments name the rule each step implements.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use crate::pyliteral::{PyValue, literal_eval, py_float, py_strip};

/// The reference's "first number" pattern. `[0-9]` where Python's `\d` also matches
/// non-ASCII digits: answers never contain those, and Rust could not parse them anyway.
static FIRST_NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?").expect("static regex")
});

/// DAEval's `@name[value]` answer pairs.
static AT_PAIR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"@([^\[]+)\[([^\]]*)\]").expect("static regex"));

/// How an exact_match decision was reached (reported in score details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchRule {
    /// Trimmed, lowercased strings are equal.
    String,
    /// Both parse as Python lists; compared as sets of lowercased `str(item)`.
    List,
    /// Both parse as floats; first numbers compared by relative error.
    Numeric,
    /// None of the rules applied (score 0).
    None,
}

impl MatchRule {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchRule::String => "string",
            MatchRule::List => "list",
            MatchRule::Numeric => "numeric",
            MatchRule::None => "none",
        }
    }
}

/// Result of [`exact_match`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExactMatch {
    pub score: f64,
    pub rule: MatchRule,
    /// Set when the numeric rule ran.
    pub relative_error: Option<f64>,
}

/// The first number in `text` (the reference's `extract_number`).
pub fn first_number(text: &str) -> Option<f64> {
    let text = py_strip(text);
    if text.is_empty() {
        return None;
    }
    FIRST_NUMBER
        .find(text)
        .and_then(|m| m.as_str().parse::<f64>().ok())
}

/// `|p - g| / |g|`, or `|p|` when `g == 0`.
pub fn relative_error(p: f64, g: f64) -> f64 {
    if g == 0.0 {
        p.abs()
    } else {
        (p - g).abs() / g.abs()
    }
}

/// exact_match(tolerance): trimmed+lowercased equality; else both Python lists → equal
/// sets of lowercased `str(item)`; else both `float()`-parseable → first numbers within
/// relative error `< tolerance` (strict); else 0.
pub fn exact_match(prediction: &str, truth: &str, tolerance: f64) -> ExactMatch {
    let norm_pred = py_strip(prediction).to_lowercase();
    let norm_truth = py_strip(truth).to_lowercase();
    if norm_pred == norm_truth {
        return ExactMatch {
            score: 1.0,
            rule: MatchRule::String,
            relative_error: None,
        };
    }
    if let (Ok(PyValue::List(p)), Ok(PyValue::List(g))) = (
        literal_eval(py_strip(prediction)),
        literal_eval(py_strip(truth)),
    ) {
        let set = |items: &[PyValue]| -> BTreeSet<String> {
            items.iter().map(|i| i.to_py_str().to_lowercase()).collect()
        };
        let score = if set(&p) == set(&g) { 1.0 } else { 0.0 };
        return ExactMatch {
            score,
            rule: MatchRule::List,
            relative_error: None,
        };
    }
    // The numeric rule only runs when the *whole* texts are floats (Python's float()), but
    // then compares the first number found in each.
    if py_float(prediction).is_some()
        && py_float(truth).is_some()
        && let (Some(p), Some(g)) = (first_number(prediction), first_number(truth))
    {
        let err = relative_error(p, g);
        let score = if err < tolerance { 1.0 } else { 0.0 };
        return ExactMatch {
            score,
            rule: MatchRule::Numeric,
            relative_error: Some(err),
        };
    }
    ExactMatch {
        score: 0.0,
        rule: MatchRule::None,
        relative_error: None,
    }
}

/// The `@name[value]` pairs of a prediction, names and values trimmed, in order.
pub fn parse_at_pairs(prediction: &str) -> Vec<(String, String)> {
    AT_PAIR
        .captures_iter(prediction)
        .map(|c| (py_strip(&c[1]).to_owned(), py_strip(&c[2]).to_owned()))
        .collect()
}

/// DAEval ground truth: a Python literal list; each item that is a list of length >= 2
/// becomes `(str(item[0]), str(item[1]))`, other items are ignored (as the reference does).
/// An answer that is not a literal list is an error here (the reference would silently
/// treat it as "no pairs" and give full marks to an answer with no pairs).
pub fn parse_truth_pairs(truth: &str) -> Result<Vec<(String, String)>, String> {
    match literal_eval(py_strip(truth)) {
        Ok(PyValue::List(items)) => Ok(items
            .iter()
            .filter_map(|item| match item {
                PyValue::List(pair) if pair.len() >= 2 => {
                    Some((pair[0].to_py_str(), pair[1].to_py_str()))
                }
                _ => None,
            })
            .collect()),
        Ok(other) => Err(format!(
            "expected a list of [name, value] pairs, found {}",
            other.repr()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Result of [`list_match`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListMatch {
    pub score: f64,
    pub predicted_pairs: usize,
    pub expected_pairs: usize,
    /// The first name whose value did not match, when that was the reason for 0.
    pub mismatch: Option<String>,
}

/// list_match(tolerance): same number of pairs, same set of names, and every value equal:
/// numerically (`|p-g|/|g| <= t`, or `|p-g| <= t` when `g == 0`) when both hold a number,
/// else as exact, case-sensitive strings. Duplicate names collapse (last value wins) after
/// the count check, exactly as the reference's dict conversion does.
pub fn list_match(prediction: &str, truth: &str, tolerance: f64) -> Result<ListMatch, String> {
    let truth_pairs = parse_truth_pairs(truth)?;
    let pred_pairs = parse_at_pairs(prediction);
    let mut result = ListMatch {
        score: 0.0,
        predicted_pairs: pred_pairs.len(),
        expected_pairs: truth_pairs.len(),
        mismatch: None,
    };
    if pred_pairs.len() != truth_pairs.len() {
        return Ok(result);
    }
    let pred: HashMap<&str, &str> = pred_pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let gold: HashMap<&str, &str> = truth_pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if pred.keys().collect::<BTreeSet<_>>() != gold.keys().collect::<BTreeSet<_>>() {
        return Ok(result);
    }
    for (name, p) in &pred {
        let g = gold[name];
        let ok = match (first_number(p), first_number(g)) {
            (Some(pn), Some(gn)) => {
                if gn == 0.0 {
                    (pn - gn).abs() <= tolerance
                } else {
                    (pn - gn).abs() / gn.abs() <= tolerance
                }
            }
            _ => p == &g,
        };
        if !ok {
            result.mismatch = Some((*name).to_owned());
            return Ok(result);
        }
    }
    result.score = 1.0;
    Ok(result)
}

/// dabstep: trimmed, lowercased equality.
pub fn dabstep(prediction: &str, truth: &str) -> f64 {
    if py_strip(prediction).to_lowercase() == py_strip(truth).to_lowercase() {
        1.0
    } else {
        0.0
    }
}

/// Levenshtein similarity `1 - dist / maxlen` over characters of the trimmed, lowercased
/// texts (1 when both are empty, 0 when one is).
pub fn similarity(prediction: &str, truth: &str) -> f64 {
    let a = py_strip(prediction).to_lowercase();
    let b = py_strip(truth).to_lowercase();
    let (la, lb) = (a.chars().count(), b.chars().count());
    if la == 0 && lb == 0 {
        return 1.0;
    }
    if la == 0 || lb == 0 {
        return 0.0;
    }
    1.0 - strsim::levenshtein(&a, &b) as f64 / la.max(lb) as f64
}

/// fuzzy_exact_match(threshold): 1 iff [`similarity`] >= threshold.
pub fn fuzzy_exact_match(prediction: &str, truth: &str, threshold: f64) -> (f64, f64) {
    let sim = similarity(prediction, truth);
    (if sim >= threshold { 1.0 } else { 0.0 }, sim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_rules_in_order() {
        assert_eq!(
            exact_match(" Control Group\n", "control group", 0.03).score,
            1.0
        );
        let list = exact_match("['b', 'A']", "['a', 'B']", 0.0);
        assert_eq!((list.score, list.rule), (1.0, MatchRule::List));
        // Lists are sets: duplicates do not count.
        assert_eq!(exact_match("['a', 'a', 'b']", "['b', 'a']", 0.0).score, 1.0);
        assert_eq!(exact_match("['a']", "['a', 'b']", 0.0).score, 0.0);
        // A list and a non-list never use the list rule.
        assert_eq!(exact_match("['0.5']", "0.5", 0.03).rule, MatchRule::None);
        let num = exact_match("0.206", "0.20", 0.03);
        assert_eq!((num.score, num.rule), (1.0, MatchRule::Numeric));
        // Strict `<`: exactly at the tolerance is wrong.
        assert_eq!(exact_match("103", "100", 0.03).score, 0.0);
        assert_eq!(exact_match("102.99", "100", 0.03).score, 1.0);
        // Tolerance 0: equal numbers written differently score 0 (0 < 0 is false).
        assert_eq!(exact_match("0.03050", "0.0305", 0.0).score, 0.0);
        // Not float()-parseable → no numeric rule, even though a number is in there.
        assert_eq!(exact_match("34.65%", "34.65", 0.03).score, 0.0);
        assert_eq!(exact_match("about 5", "5", 0.03).score, 0.0);
        // Ground truth zero: the error is |p|.
        assert_eq!(exact_match("0.02", "0", 0.03).score, 1.0);
        assert_eq!(exact_match("0.04", "0", 0.03).score, 0.0);
        // float("1_000") is 1000 but the first number is 1: the reference compares 1.
        assert_eq!(exact_match("1_000", "1000", 0.03).score, 0.0);
    }

    #[test]
    fn list_match_rules() {
        let truth = "[['mean_fare', '34.65'], ['count', '10']]";
        let score = |p: &str| list_match(p, truth, 0.0).unwrap().score;
        assert_eq!(score("@mean_fare[34.65] @count[10]"), 1.0);
        assert_eq!(score("@count[10]\n@mean_fare[ 34.65% ]"), 1.0);
        assert_eq!(score("@mean_fare[34.65]"), 0.0);
        assert_eq!(score("@mean_fare[34.65] @count[10] @x[1]"), 0.0);
        assert_eq!(score("@mean_fare[34.65] @mean_fare[34.65]"), 0.0);
        assert_eq!(score("@Mean_Fare[34.65] @count[10]"), 0.0);
        assert_eq!(score("@mean_fare[34.66] @count[10]"), 0.0);
        let text = "[['dist', 'normal']]";
        assert_eq!(list_match("@dist[normal]", text, 0.0).unwrap().score, 1.0);
        assert_eq!(list_match("@dist[Normal]", text, 0.0).unwrap().score, 0.0);
        // `<=` with tolerance: exactly at the edge is right.
        assert_eq!(
            list_match("@a[110]", "[['a', '100']]", 0.1).unwrap().score,
            1.0
        );
        assert_eq!(
            list_match("@a[0.1]", "[['a', '0']]", 0.1).unwrap().score,
            1.0
        );
        assert!(list_match("@a[1]", "not a list", 0.0).is_err());
    }

    #[test]
    fn duplicate_names_collapse_after_the_count_check() {
        // Two predicted pairs, two expected pairs, but one name twice: the name sets differ.
        let truth = "[['a', '1'], ['b', '2']]";
        assert_eq!(list_match("@a[1] @a[2]", truth, 0.0).unwrap().score, 0.0);
        // Duplicates in the truth collapse too (last wins), as a Python dict would.
        let dup_truth = "[['a', '1'], ['a', '2']]";
        assert_eq!(
            list_match("@a[5] @a[2]", dup_truth, 0.0).unwrap().score,
            1.0
        );
    }

    #[test]
    fn dabstep_and_fuzzy() {
        assert_eq!(dabstep("  nl ", "NL"), 1.0);
        assert_eq!(dabstep("B. BE", "B. BE."), 0.0);
        assert_eq!(fuzzy_exact_match("kitten", "sitten", 0.8).0, 1.0); // 5/6
        assert_eq!(fuzzy_exact_match("kitten", "sittin", 0.8).0, 0.0); // 4/6
        assert_eq!(fuzzy_exact_match("", "  ", 0.8).0, 1.0);
        assert_eq!(fuzzy_exact_match("a", "", 0.8).0, 0.0);
    }
}
