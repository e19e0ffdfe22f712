//! Property tests of the numeric and list rules and of the Python literal round trip.

use dsbox_tasks::metric::text::{exact_match, first_number, list_match, relative_error};
use dsbox_tasks::pyliteral::{PyValue, float_repr, literal_eval, py_float};
use proptest::prelude::*;

/// Numbers as an agent would write them (no exponent), away from zero.
fn truth_value() -> impl Strategy<Value = f64> {
    prop_oneof![-1e6..-1e-3f64, 1e-3..1e6f64]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// exact_match is 1 within (1 - 1e-6) × tolerance and 0 from (1 + 1e-6) × tolerance on.
    #[test]
    fn exact_match_numeric_tolerance(g in truth_value(), frac in 0.0..0.999_999f64, tol in 0.001..0.2f64, up in any::<bool>()) {
        let sign = if up { 1.0 } else { -1.0 };
        let inside = g * (1.0 + sign * frac * tol);
        let outside = g * (1.0 + sign * tol * (1.0 + 1e-6 + frac));
        let (gs, is, os) = (format!("{g}"), format!("{inside}"), format!("{outside}"));
        prop_assert_eq!(exact_match(&is, &gs, tol).score, 1.0, "{} vs {} tol {}", is, gs, tol);
        prop_assert_eq!(exact_match(&os, &gs, tol).score, 0.0, "{} vs {} tol {}", os, gs, tol);
    }

    /// The decision is exactly `relative_error < tolerance` on the parsed numbers.
    #[test]
    fn exact_match_is_the_strict_relative_error_rule(g in truth_value(), p in truth_value(), tol in 0.0..0.5f64) {
        let (gs, ps) = (format!("{g}"), format!("{p}"));
        prop_assume!(gs.to_lowercase() != ps.to_lowercase());
        let want = if relative_error(p, g) < tol { 1.0 } else { 0.0 };
        prop_assert_eq!(exact_match(&ps, &gs, tol).score, want);
    }

    /// Case and surrounding whitespace never matter.
    #[test]
    fn exact_match_ignores_case_and_outer_space(s in "[A-Za-z0-9 ._-]{1,20}", pad_l in "[ \t\n]{0,3}", pad_r in "[ \t\n]{0,3}") {
        let padded = format!("{pad_l}{}{pad_r}", s.to_uppercase());
        prop_assert_eq!(exact_match(&padded, &s, 0.0).score, 1.0);
    }

    /// Python-literal lists compare as sets of lowercased items: order, case and repeats
    /// do not matter; a missing or extra item does.
    #[test]
    fn exact_match_lists_are_sets(items in prop::collection::btree_set("[a-z]{1,6}", 1..6), seed in any::<u64>()) {
        let items: Vec<String> = items.into_iter().collect();
        let render = |v: &[String]| format!("[{}]", v.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "));
        let truth = render(&items);
        let mut shuffled = items.clone();
        let k = (seed as usize) % shuffled.len();
        shuffled.rotate_left(k);
        shuffled.push(shuffled[0].to_uppercase());
        prop_assert_eq!(exact_match(&render(&shuffled), &truth, 0.0).score, 1.0);
        let mut extra = items.clone();
        extra.push("zzzzzzz".into());
        prop_assert_eq!(exact_match(&render(&extra), &truth, 0.0).score, 0.0);
        if items.len() > 1 {
            prop_assert_eq!(exact_match(&render(&items[1..]), &truth, 0.0).score, 0.0);
        }
    }

    /// list_match: any order of the pairs is right; a value within `<=` tolerance is right,
    /// one beyond it wrong; a percent sign after a number is ignored.
    #[test]
    fn list_match_pairs(values in prop::collection::vec(truth_value(), 1..5), tol in 0.0..0.1f64, frac in 0.0..0.999f64, seed in any::<u64>()) {
        let names: Vec<String> = (0..values.len()).map(|i| format!("name_{i}")).collect();
        let truth = format!("[{}]", names.iter().zip(&values).map(|(n, v)| format!("['{n}', '{v}']")).collect::<Vec<_>>().join(", "));
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.rotate_left((seed as usize) % values.len());
        let render = |f: &dyn Fn(usize) -> String| order.iter().map(|&i| format!("@{}[{}]", names[i], f(i))).collect::<Vec<_>>().join(" ");
        prop_assert_eq!(list_match(&render(&|i| format!("{}%", values[i])), &truth, tol).unwrap().score, 1.0);
        let near = render(&|i| format!("{}", values[i] * (1.0 + frac * tol)));
        prop_assert_eq!(list_match(&near, &truth, tol).unwrap().score, 1.0);
        let j = (seed as usize) % values.len();
        let far = render(&|i| if i == j { format!("{}", values[i] * (1.0 + tol * 1.001 + 1e-9)) } else { format!("{}", values[i]) });
        prop_assert_eq!(list_match(&far, &truth, tol).unwrap().score, 0.0);
        // Dropping a pair, adding one, or repeating a name is wrong.
        let fewer: String = order.iter().skip(1).map(|&i| format!("@{}[{}]", names[i], values[i])).collect();
        prop_assert_eq!(list_match(&fewer, &truth, tol).unwrap().score, 0.0);
        let more = format!("{} @extra[1]", render(&|i| format!("{}", values[i])));
        prop_assert_eq!(list_match(&more, &truth, tol).unwrap().score, 0.0);
    }

    /// float_repr is Python's repr: it reads back to the same value with float() and with
    /// the literal parser, and the first-number rule finds it.
    #[test]
    fn float_repr_round_trips(bits in any::<u64>()) {
        let x = f64::from_bits(bits);
        prop_assume!(x.is_finite());
        let r = float_repr(x);
        prop_assert_eq!(py_float(&r), Some(x));
        prop_assert_eq!(literal_eval(&r).unwrap(), PyValue::Float(x));
        prop_assert_eq!(first_number(&r), Some(x));
        prop_assert!(r.contains('.') || r.contains('e'), "{}", r);
    }

    /// repr of a nested value parses back to the same value.
    #[test]
    fn literal_repr_round_trips(v in py_value()) {
        let text = v.repr();
        prop_assert_eq!(literal_eval(&text).unwrap(), v, "{}", text);
    }
}

fn py_value() -> impl Strategy<Value = PyValue> {
    let leaf = prop_oneof![
        Just(PyValue::None),
        any::<bool>().prop_map(PyValue::Bool),
        any::<i64>().prop_map(|i| PyValue::Int(i.to_string())),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(PyValue::Float),
        "\\PC{0,8}".prop_map(PyValue::Str),
        "[\\x00-\\x1f'\"\\\\ a-z\u{e9}\u{2028}\u{1F600}]{0,8}".prop_map(PyValue::Str),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(PyValue::List),
            prop::collection::vec(inner.clone(), 0..4).prop_map(PyValue::Tuple),
            prop::collection::vec(
                (
                    any::<i32>().prop_map(|i| PyValue::Int(i.to_string())),
                    inner
                ),
                0..3
            )
            .prop_map(PyValue::Dict),
        ]
    })
}
