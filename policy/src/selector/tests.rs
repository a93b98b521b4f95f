use super::*;
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn m(sel: &str, pairs: &[(&str, &str)]) -> bool {
    Selector::parse(sel).unwrap_or_else(|e| panic!("{sel:?}: {e}")).matches(&labels(pairs))
}

fn err(sel: &str) -> ParseError {
    Selector::parse(sel).expect_err(sel)
}

#[test]
fn empty_and_whitespace_mean_all() {
    assert_eq!(Selector::parse("").unwrap(), Selector::All);
    assert_eq!(Selector::parse(" \t ").unwrap(), Selector::All);
    assert!(m("", &[]));
    assert!(m("all()", &[]));
    assert!(m("all( )", &[("a", "b")]));
}

#[test]
fn only_space_and_tab_are_whitespace() {
    assert!(Selector::parse("a == 'b'\t&& c == 'd'").is_ok());
    assert_eq!(err("a == 'b'\n").position, 8);
    assert!(Selector::parse("\ra == 'b'").is_err());
}

#[test]
fn equality_and_inequality() {
    assert!(m("a == 'b'", &[("a", "b")]));
    assert!(!m("a == 'b'", &[("a", "c")]));
    assert!(!m("a == 'b'", &[]));
    assert!(m("a != 'b'", &[("a", "c")]));
    assert!(!m("a != 'b'", &[("a", "b")]));
    // != is true when the label is absent.
    assert!(m("a != 'b'", &[]));
    assert!(m("a==\"b\"", &[("a", "b")]));
    assert!(m("a == ''", &[("a", "")]));
}

#[test]
fn set_membership() {
    assert!(m("a in {'x', 'y'}", &[("a", "y")]));
    assert!(!m("a in {'x', 'y'}", &[("a", "z")]));
    assert!(!m("a in {'x'}", &[]));
    assert!(m("a not in {'x', 'y'}", &[("a", "z")]));
    assert!(!m("a not in {'x'}", &[("a", "x")]));
    // not in is true when the label is absent.
    assert!(m("a not in {'x'}", &[]));
    // Empty set and trailing comma are accepted, as by Calico's parser.
    assert!(!m("a in {}", &[("a", "")]));
    assert!(m("a not in {}", &[("a", "x")]));
    assert!(m("a in {'x',}", &[("a", "x")]));
    assert!(m("a not  \t in{'x'}", &[("a", "y")]));
    assert!(err("a in 'x'").message.contains("set literal"));
    assert!(err("a in {'x' 'y'}").message.contains("'}'"));
    assert!(err("a in {x}").message.contains("'}'"));
    assert!(err("a not 'x'").message.contains("operator"));
}

#[test]
fn has_and_negation() {
    assert!(m("has(a)", &[("a", "")]));
    assert!(!m("has(a)", &[]));
    assert!(m("!has(a)", &[]));
    assert!(m("! has(a)", &[]));
    assert!(m("has( a )", &[("a", "1")]));
    assert!(m("!!has(a)", &[("a", "1")]));
    assert!(m("!a == 'b'", &[("a", "c")]));
    assert!(m("!(a == 'b' || c == 'd')", &[("a", "x")]));
    assert!(err("has()").message.contains("no label name"));
    assert!(err("has(a").message.contains("closing"));
    // `has (a)` is a label called `has` followed by junk.
    assert!(Selector::parse("has (a)").is_err());
}

#[test]
fn string_operators() {
    assert!(m("a contains 'ell'", &[("a", "hello")]));
    assert!(!m("a contains 'x'", &[("a", "hello")]));
    assert!(!m("a contains ''", &[]));
    assert!(m("a starts with 'he'", &[("a", "hello")]));
    assert!(m("a starts  with 'he'", &[("a", "hello")]));
    assert!(!m("a starts with 'lo'", &[("a", "hello")]));
    assert!(m("a ends with 'lo'", &[("a", "hello")]));
    assert!(!m("a ends with 'he'", &[]));
    assert!(err("a starts 'x'").message.contains("operator"));
    assert!(err("a ends 'x'").message.contains("operator"));
}

#[test]
fn quoting_has_no_escapes() {
    assert!(m(r#"a == "it's""#, &[("a", "it's")]));
    assert!(m(r#"a == 'say "hi"'"#, &[("a", "say \"hi\"")]));
    assert!(m(r#"a == 'x\'"#, &[("a", "x\\")]));
    assert!(err("a == 'x").message.contains("unterminated"));
    assert!(err("a == b").message.contains("quoted string"));
}

#[test]
fn precedence_and_parentheses() {
    // && binds tighter than ||.
    let s = "a == '1' || b == '1' && c == '1'";
    assert!(m(s, &[("a", "1")]));
    assert!(!m(s, &[("b", "1")]));
    assert!(m(s, &[("b", "1"), ("c", "1")]));
    let p = "(a == '1' || b == '1') && c == '1'";
    assert!(!m(p, &[("a", "1")]));
    assert!(m(p, &[("a", "1"), ("c", "1")]));
    assert!(err("(a == '1'").message.contains("')'"));
    assert!(err("a == '1')").message.contains("after the end"));
    assert!(err("a == '1' &&").message.contains("end of selector"));
    assert!(err("a == '1' & b == '2'").message.contains("&&"));
    assert!(err("a == '1' | b == '2'").message.contains("||"));
    assert!(err("a = '1'").message.contains("=="));
}

#[test]
fn label_keys() {
    assert!(m("projectcalico.org/namespace == 'x'", &[("projectcalico.org/namespace", "x")]));
    assert!(m("k8s-app_1.x == 'y'", &[("k8s-app_1.x", "y")]));
    assert!(err("a:b == 'c'").position == 1);
    assert!(Selector::parse(&format!("{} == 'x'", "k".repeat(512))).is_ok());
    assert!(Selector::parse(&format!("{} == 'x'", "k".repeat(513))).is_err());
    assert!(err("a b").message.contains("operator"));
    assert!(err("== 'x'").message.contains("unexpected"));
}

#[test]
fn global_evaluates_true_and_prints() {
    assert!(m("global()", &[]));
    assert_eq!(Selector::parse("global( )").unwrap().to_string(), "global()");
    assert!(err("global(").message.contains("closing"));
    assert!(err("all(x)").message.contains("closing"));
}

#[test]
fn error_positions_point_at_the_problem() {
    assert_eq!(err("a == 'b' && $").position, 12);
    assert_eq!(err("a == 'b' && c").position, 13);
    assert_eq!(err("a ==").position, 4);
}

#[test]
fn prefixing_and_replacement() {
    let s = Selector::parse("a == 'x' && !has(b) || all()").unwrap();
    assert_eq!(s.with_key_prefix("pcns.").to_string(), "pcns.a == \"x\" && !has(pcns.b) || all()");
    let r = s.replace_all_global(&Selector::Has("ns".into()), &Selector::Global);
    assert_eq!(r.to_string(), "a == \"x\" && !has(b) || has(ns)");
}

fn arb_selector() -> impl Strategy<Value = Selector> {
    let key = prop::sample::select(vec!["a", "b", "app", "x.io/y"]).prop_map(String::from);
    let val = prop::sample::select(vec!["", "1", "web", "it's", "say \"hi\""]).prop_map(String::from);
    let vals = prop::collection::vec(val.clone(), 0..3).prop_map(|mut v| {
        v.sort();
        v.dedup();
        v
    });
    let leaf = prop_oneof![
        Just(Selector::All),
        Just(Selector::Global),
        key.clone().prop_map(Selector::Has),
        (key.clone(), val.clone()).prop_map(|(k, v)| Selector::Eq(k, v)),
        (key.clone(), val.clone()).prop_map(|(k, v)| Selector::Ne(k, v)),
        (key.clone(), vals.clone()).prop_map(|(k, v)| Selector::In(k, v)),
        (key.clone(), vals).prop_map(|(k, v)| Selector::NotIn(k, v)),
        (key.clone(), val.clone()).prop_map(|(k, v)| Selector::Contains(k, v)),
        (key.clone(), val.clone()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (key, val).prop_map(|(k, v)| Selector::EndsWith(k, v)),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Selector::And),
            prop::collection::vec(inner, 2..4).prop_map(Selector::Or),
        ]
    })
}

fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "app", "x.io/y"]).prop_map(String::from),
        prop::sample::select(vec!["", "1", "web", "website", "it's"]).prop_map(String::from),
        0..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Printing then parsing gives back a selector that behaves the same on every label set.
    #[test]
    fn display_round_trips(sel in arb_selector(), l in arb_labels()) {
        let printed = sel.to_string();
        let reparsed = Selector::parse(&printed).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
        prop_assert_eq!(reparsed.matches(&l), sel.matches(&l), "{}", printed);
        prop_assert_eq!(reparsed.to_string(), printed);
    }

    /// Arbitrary input never panics the parser.
    #[test]
    fn parser_never_panics(s in "[ a-z()!=&|'\"{},.\\-/]{0,30}") {
        let _ = Selector::parse(&s);
    }
}
