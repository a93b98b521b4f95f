//! Policy semantics, one rule at a time, with Calico's behaviour as the authority: ordering of
//! policies and tiers, Kubernetes NetworkPolicy as Calico converts it, Calico rule matching and
//! actions, tiers, profiles, host endpoints, staged policies, IP versions, selector scoping, and
//! how the evaluator combines the source's egress with the destination's ingress.
//!
//! Every test builds a small cluster from inline YAML (usually [`support::BASE`] plus the policies
//! under test), evaluates flows and checks the verdict and what decided it.

mod support {
    use palisade_policy::convert::build_cluster;
    use palisade_policy::eval::{Decision, DirectionVerdict, Evaluator, Flow, RuleRef, Verdict};
    use palisade_policy::load::{parse_str, Loaded};
    use palisade_policy::model::{proto, Action, Cluster};
    use std::net::IpAddr;

    /// Two labelled namespaces, service accounts and five pods; no policy.
    pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web-sa, namespace: prod, labels: {role: frontend}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: db-sa, namespace: prod, labels: {role: backend}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  serviceAccountName: web-sa
  containers:
  - name: web
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {podIP: 10.0.1.1, podIPs: [{ip: 10.0.1.1}, {ip: "fd00::1:1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  serviceAccountName: db-sa
  containers:
  - name: db
    ports: [{name: pg, containerPort: 5432}]
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: prod, labels: {app: client}}
status: {podIP: 10.0.1.3, podIPs: [{ip: 10.0.1.3}, {ip: "fd00::1:3"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dev, labels: {app: client}}
status: {podIP: 10.0.2.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
spec:
  containers:
  - name: web
    ports: [{name: http, containerPort: 80}]
status: {podIP: 10.0.2.1}
"#;

    /// prod/web (named ports http = TCP 8080, dns = UDP 53; service account web-sa).
    pub const WEB: &str = "10.0.1.1";
    /// prod/web's IPv6 address.
    pub const WEB6: &str = "fd00::1:1";
    /// prod/db (named port pg = TCP 5432; service account db-sa).
    pub const DB: &str = "10.0.1.2";
    /// prod/client (service account default).
    pub const CLIENT: &str = "10.0.1.3";
    /// prod/client's IPv6 address.
    pub const CLIENT6: &str = "fd00::1:3";
    /// dev/client.
    pub const DEV_CLIENT: &str = "10.0.2.3";
    /// dev/web (named port http = TCP 80).
    pub const DEV_WEB: &str = "10.0.2.1";
    /// An address no endpoint or network set owns.
    pub const EXTERNAL: &str = "192.0.2.1";
    /// An IPv6 address no endpoint owns.
    pub const EXTERNAL6: &str = "2001:db8::1";

    /// Removes the indentation common to all non-blank lines, so manifests can be indented in code.
    fn dedent(s: &str) -> String {
        let indent = s.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
        s.lines().map(|l| l.get(indent..).unwrap_or("")).collect::<Vec<_>>().join("\n")
    }

    /// The cluster the manifests describe; panics with every error if they are invalid.
    pub fn cluster(yaml: &str) -> Cluster {
        let resources = parse_str(&dedent(yaml)).unwrap_or_else(|es| panic!("parse: {es:#?}"));
        let loaded: Vec<Loaded> = resources.into_iter().map(|resource| Loaded { resource, file: None }).collect();
        build_cluster(&loaded).unwrap_or_else(|es| panic!("build: {}", es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))
    }

    /// [`BASE`] plus `extra`.
    pub fn with_base(extra: &str) -> Cluster {
        cluster(&format!("{BASE}\n---\n{}", dedent(extra)))
    }

    fn flow(src: &str, dst: &str, protocol: u8, dst_port: u16, icmp: Option<(u8, Option<u8>)>) -> Flow {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let src_port = if proto::has_ports(protocol) { 40000 } else { 0 };
        Flow { src: ip(src), dst: ip(dst), protocol, src_port, dst_port, icmp_type: icmp.map(|i| i.0), icmp_code: icmp.and_then(|i| i.1) }
    }

    /// A TCP flow to `port`.
    pub fn tcp(src: &str, dst: &str, port: u16) -> Flow {
        flow(src, dst, proto::TCP, port, None)
    }

    /// A UDP flow to `port`.
    pub fn udp(src: &str, dst: &str, port: u16) -> Flow {
        flow(src, dst, proto::UDP, port, None)
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) flow of the given type and code.
    pub fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8) -> Flow {
        let p = if src.contains(':') { proto::ICMPV6 } else { proto::ICMP };
        flow(src, dst, p, 0, Some((icmp_type, Some(code))))
    }

    /// The verdict for `flow`.
    pub fn eval(c: &Cluster, flow: Flow) -> Verdict {
        Evaluator::new(c).evaluate(&flow)
    }

    /// Whether `flow` is allowed.
    pub fn allows(c: &Cluster, flow: Flow) -> bool {
        eval(c, flow).allowed
    }

    /// The destination endpoint's ingress verdict.
    pub fn ingress(c: &Cluster, flow: Flow) -> DirectionVerdict {
        eval(c, flow).ingress.expect("the destination is an endpoint")
    }

    /// The source endpoint's egress verdict.
    pub fn egress(c: &Cluster, flow: Flow) -> DirectionVerdict {
        eval(c, flow).egress.expect("the source is an endpoint")
    }

    /// Asserts that a policy rule decided `d`: tier, policy name, rule index and outcome.
    pub fn assert_rule(d: &DirectionVerdict, tier: &str, policy: &str, rule: usize, allowed: bool) {
        match &d.decided_by {
            Decision::Rule(r) => {
                let got = (r.tier.as_deref(), r.policy.as_str(), r.rule, d.allowed);
                assert_eq!(got, (Some(tier), policy, rule, allowed), "decided by {r:?}");
                assert!(!r.staged, "a staged rule decided: {r:?}");
            }
            other => panic!("expected policy {policy} rule {rule} to decide, got {other:?}"),
        }
    }

    /// Asserts that the end of `tier` denied `d`.
    pub fn assert_tier_default(d: &DirectionVerdict, tier: &str) {
        assert_eq!(d.decided_by, Decision::TierDefault { tier: tier.into() });
        assert!(!d.allowed);
    }

    /// Asserts that the first rule of a profile allowed `d`.
    pub fn assert_profile_allows(d: &DirectionVerdict, profile: &str) {
        match &d.decided_by {
            Decision::Profile(r) => assert_eq!((r.policy.as_str(), r.rule, r.action), (profile, 0, Action::Allow)),
            other => panic!("expected profile {profile} to decide, got {other:?}"),
        }
        assert!(d.allowed);
    }

    /// A trail entry for a rule of a tiered policy.
    pub fn matched(tier: &str, policy: &str, rule: usize, action: Action, staged: bool) -> RuleRef {
        RuleRef { tier: Some(tier.into()), policy: policy.into(), rule, action, staged }
    }
}

use palisade_policy::eval::Decision;
use palisade_policy::model::Action;
use support::*;

// ---------------------------------------------------------------------------------------------
// Ordering of policies and tiers
// ---------------------------------------------------------------------------------------------

/// Two global policies on prod/web, `deny` and `allow`, with the given orders ("" for unset).
fn deny_and_allow(deny_name: &str, deny_order: &str, allow_name: &str, allow_order: &str) -> String {
    let policy = |name: &str, order: &str, action: &str| {
        let order = if order.is_empty() { String::new() } else { format!("order: {order}, ") };
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\n\
             spec: {{{order}selector: \"app == 'web'\", ingress: [{{action: {action}}}]}}\n"
        )
    };
    format!("{}---\n{}", policy(deny_name, deny_order, "Deny"), policy(allow_name, allow_order, "Allow"))
}

#[test]
fn policies_apply_in_ascending_order() {
    let c = with_base(&deny_and_allow("deny", "20", "allow", "10"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "allow", 0, true);
    let c = with_base(&deny_and_allow("deny", "10", "allow", "20"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "deny", 0, false);
}

#[test]
fn orders_compare_as_numbers_not_strings() {
    let c = with_base(&deny_and_allow("deny", "100", "allow", "9.5"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "allow", 0, true);
}

#[test]
fn policy_without_order_comes_after_every_ordered_policy() {
    let c = with_base(&deny_and_allow("a-deny", "", "z-allow", "999999"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "z-allow", 0, true);
}

#[test]
fn equal_orders_tie_break_by_name() {
    let c = with_base(&deny_and_allow("a-deny", "10", "b-allow", "10"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "a-deny", 0, false);
    let c = with_base(&deny_and_allow("b-deny", "10", "a-allow", "10"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "a-allow", 0, true);
}

#[test]
fn unset_orders_tie_break_by_name() {
    let c = with_base(&deny_and_allow("a-deny", "", "b-allow", ""));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "a-deny", 0, false);
    let c = with_base(&deny_and_allow("b-deny", "", "a-allow", ""));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "a-allow", 0, true);
}

/// Tiers `first` and `second` (orders given, "" for unset), `first` denying prod/web's ingress
/// and `second` allowing it.
fn two_tiers(first_order: &str, second_order: &str) -> String {
    let tier = |name: &str, order: &str| {
        let spec = if order.is_empty() { "{}".to_string() } else { format!("{{order: {order}}}") };
        format!("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    };
    let policy = |tier: &str, action: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {tier}.p}}\n\
             spec: {{tier: {tier}, selector: \"app == 'web'\", ingress: [{{action: {action}}}]}}\n"
        )
    };
    [tier("first", first_order), tier("second", second_order), policy("first", "Deny"), policy("second", "Allow")].join("---\n")
}

#[test]
fn tiers_apply_in_ascending_order() {
    let c = with_base(&two_tiers("100", "200"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "first", "first.p", 0, false);
    let c = with_base(&two_tiers("300", "200"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "second", "second.p", 0, true);
}

#[test]
fn equal_tier_orders_tie_break_by_name() {
    let c = with_base(&two_tiers("100", "100"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "first", "first.p", 0, false);
}

#[test]
fn tier_without_order_comes_last() {
    let c = with_base(&two_tiers("", "5000000"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "second", "second.p", 0, true);
}

#[test]
fn default_tier_has_order_one_million() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: early}
        spec: {order: 999999}
        ---
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: late}
        spec: {order: 2000000}
        ---
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: unordered}
        spec: {}
        "#,
    );
    let names: Vec<&str> = c.tiers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["early", "default", "late", "unordered"]);
    assert_eq!(c.tiers[1].order, Some(1_000_000.0));
}

#[test]
fn tier_ordered_after_default_sees_only_what_default_passes() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: late}
        spec: {order: 2000000}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: late.deny}
        spec: {tier: late, selector: "app == 'web'", ingress: [{action: Deny}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: web}
        spec:
          selector: "app == 'web'"
          ingress:
          - {action: Allow, protocol: TCP, destination: {ports: [80]}}
          - {action: Pass}
        "#,
    );
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "web", 0, true);
    let d = ingress(&c, tcp(CLIENT, WEB, 81));
    assert_rule(&d, "late", "late.deny", 0, false);
    assert_eq!(d.matched, [matched("default", "web", 1, Action::Pass, false)]);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy as Calico converts it
// ---------------------------------------------------------------------------------------------

/// A Kubernetes policy allowing prod/client to prod/web, and a Calico policy of the given order
/// denying the same traffic.
fn k8s_allow_vs_calico_deny(order: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-client, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: deny-client, namespace: prod}}
spec: {{order: {order}, selector: "app == 'web'", ingress: [{{action: Deny, source: {{selector: "app == 'client'"}}}}]}}
"#
    )
}

#[test]
fn k8s_policy_is_in_the_default_tier_at_order_1000() {
    let c = with_base(&k8s_allow_vs_calico_deny("999"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "prod/deny-client", 0, false);
    let c = with_base(&k8s_allow_vs_calico_deny("1001"));
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "prod/knp.default.allow-client", 0, true);
}

#[test]
fn k8s_policy_types_default_to_ingress_without_egress_rules() {
    for egress_field in ["", "egress: []"] {
        let c = with_base(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
             spec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}]}}]\n  {egress_field}\n"
        ));
        assert!(!allows(&c, tcp(DEV_CLIENT, WEB, 80)), "{egress_field:?}: ingress applies");
        assert!(allows(&c, tcp(CLIENT, WEB, 80)), "{egress_field:?}");
        // Egress is not governed: prod/web may reach anything.
        assert!(egress(&c, tcp(WEB, EXTERNAL, 443)).allowed, "{egress_field:?}: egress does not apply");
    }
}

#[test]
fn k8s_egress_rules_add_egress_and_ingress_still_applies() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: egress-only-rules, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]
        "#,
    );
    assert!(allows(&c, tcp(WEB, EXTERNAL, 443)));
    assert_tier_default(&egress(&c, tcp(WEB, "198.51.100.1", 443)), "default");
    // policyTypes defaulted to [Ingress, Egress]: no ingress rules, so all ingress is denied.
    assert_tier_default(&ingress(&c, tcp(CLIENT, WEB, 80)), "default");
}

#[test]
fn k8s_explicit_egress_type_leaves_ingress_alone() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-egress, namespace: prod}
        spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}
        "#,
    );
    assert_tier_default(&egress(&c, tcp(WEB, DB, 5432)), "default");
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
}

#[test]
fn k8s_missing_or_empty_from_allows_any_source() {
    for from in ["", "from: [], "] {
        let c = with_base(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
             spec: {{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{{from}ports: [{{port: 8080}}]}}]}}\n"
        ));
        for src in [CLIENT, DEV_CLIENT, EXTERNAL] {
            assert!(allows(&c, tcp(src, WEB, 8080)), "{from:?} from {src}");
        }
        assert!(!allows(&c, tcp(CLIENT, WEB, 8081)), "{from:?}: other ports stay closed");
    }
}

#[test]
fn k8s_empty_ingress_list_denies_all_ingress() {
    for ingress_field in ["ingress: []", ""] {
        let c = with_base(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  policyTypes: [Ingress]\n  {ingress_field}\n"
        ));
        for src in [CLIENT, EXTERNAL] {
            assert_tier_default(&ingress(&c, tcp(src, WEB, 80)), "default");
        }
        assert!(allows(&c, tcp(CLIENT, DB, 5432)), "other pods are not selected");
    }
}

#[test]
fn k8s_empty_ingress_rule_allows_everything() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-all, namespace: prod}
        spec: {podSelector: {matchLabels: {app: web}}, ingress: [{}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(EXTERNAL, WEB, 1)), "default", "prod/knp.default.allow-all", 0, true);
    assert!(allows(&c, udp(DEV_CLIENT, WEB, 65535)));
    assert!(allows(&c, icmp(EXTERNAL, WEB, 8, 0)));
}

#[test]
fn k8s_namespace_and_pod_selector_in_one_peer_are_anded() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchLabels: {app: client}}}]
        "#,
    );
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)), "right pod, wrong namespace");
    assert!(!allows(&c, tcp(DEV_WEB, WEB, 80)), "right namespace, wrong pod");
}

#[test]
fn k8s_namespace_and_pod_selector_in_two_peers_are_ored() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {env: dev}}}, {podSelector: {matchLabels: {app: client}}}]
        "#,
    );
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_WEB, WEB, 80)));
    assert!(!allows(&c, tcp(DB, WEB, 80)), "prod/db matches neither peer");
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)));
}

#[test]
fn k8s_empty_namespace_selector_means_every_namespace() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress: [{from: [{namespaceSelector: {}}]}]
        "#,
    );
    for src in [CLIENT, DEV_CLIENT, DEV_WEB] {
        assert!(allows(&c, tcp(src, WEB, 80)), "from {src}");
    }
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)), "an address outside the cluster is in no namespace");
}

#[test]
fn k8s_pod_selector_alone_is_limited_to_the_policy_namespace() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(DEV_CLIENT, WEB, 80)));
}

#[test]
fn k8s_ip_block_with_except_matches_any_address_including_pods() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)), "a pod address inside the block");
    assert!(allows(&c, tcp("10.0.200.9", WEB, 80)), "a non-pod address inside the block");
    assert!(!allows(&c, tcp(DEV_CLIENT, WEB, 80)), "a pod address in the exception");
    assert!(!allows(&c, tcp("10.0.2.200", WEB, 80)), "a non-pod address in the exception");
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)), "outside the block");
}

#[test]
fn k8s_named_port_resolves_on_the_destination_pod_for_ingress() {
    let policy = |ns: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: http, namespace: {ns}}}\n\
             spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: http}}]}}]}}\n"
        )
    };
    let c = with_base(&format!("{}---\n{}", policy("prod"), policy("dev")));
    assert!(allows(&c, tcp(CLIENT, WEB, 8080)), "prod/web declares http = 8080");
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(CLIENT, DEV_WEB, 80)), "dev/web declares http = 80");
    assert!(!allows(&c, tcp(CLIENT, DEV_WEB, 8080)));
    assert!(!allows(&c, tcp(CLIENT, DB, 8080)), "prod/db declares no http port");
}

#[test]
fn k8s_named_port_resolves_on_the_destination_pod_for_egress() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: http-out, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: client}}
          policyTypes: [Egress]
          egress: [{ports: [{port: http}]}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 8080)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(CLIENT, DEV_WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT, DEV_WEB, 8080)));
    assert!(!allows(&c, tcp(CLIENT, DB, 8080)), "prod/db declares no http port");
    assert!(!allows(&c, tcp(CLIENT, EXTERNAL, 8080)), "an address outside the cluster has no named ports");
}

#[test]
fn k8s_named_port_in_egress_with_a_peer_needs_both() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: http-out, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: client}}
          policyTypes: [Egress]
          egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 8080)));
    assert!(!allows(&c, tcp(CLIENT, DEV_WEB, 80)), "dev/web declares http = 80 but is not a peer");
}

#[test]
fn k8s_named_port_needs_the_declared_protocol() {
    let policy = |port: &str| {
        with_base(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: dns, namespace: prod}}\n\
             spec: {{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{ports: [{port}]}}]}}\n"
        ))
    };
    let c = policy("{port: dns, protocol: UDP}");
    assert!(allows(&c, udp(CLIENT, WEB, 53)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 53)));
    // `dns` is declared UDP; the rule's protocol defaults to TCP, so nothing matches.
    let c = policy("{port: dns}");
    assert!(!allows(&c, udp(CLIENT, WEB, 53)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 53)));
}

#[test]
fn k8s_end_port_is_an_inclusive_range() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: range, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress: [{ports: [{port: 8000, endPort: 8100}]}]
        "#,
    );
    for (port, ok) in [(7999, false), (8000, true), (8050, true), (8100, true), (8101, false)] {
        assert_eq!(allows(&c, tcp(CLIENT, WEB, port)), ok, "port {port}");
    }
    assert!(!allows(&c, udp(CLIENT, WEB, 8000)), "the range is TCP only");
}

#[test]
fn k8s_port_protocol_defaults_to_tcp() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p53, namespace: prod}
        spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: 53}]}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 53)));
    assert!(!allows(&c, udp(CLIENT, WEB, 53)));
}

#[test]
fn k8s_port_without_number_allows_every_port_of_its_protocol() {
    let c = with_base(
        r#"
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: udp, namespace: prod}
        spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{protocol: UDP}]}]}
        "#,
    );
    assert!(allows(&c, udp(CLIENT, WEB, 1)));
    assert!(allows(&c, udp(CLIENT, WEB, 65535)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
}

// ---------------------------------------------------------------------------------------------
// Calico policy types, actions, tiers and profiles
// ---------------------------------------------------------------------------------------------

#[test]
fn calico_types_default_to_ingress_when_there_are_no_rules() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: isolate-web}
        spec: {selector: "app == 'web'"}
        "#,
    );
    assert_tier_default(&ingress(&c, tcp(CLIENT, WEB, 80)), "default");
    assert!(allows(&c, tcp(WEB, DB, 5432)), "egress is not governed");
}

#[test]
fn calico_types_default_to_egress_when_there_are_only_egress_rules() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: web-out}
        spec:
          selector: "app == 'web'"
          egress: [{action: Allow, destination: {selector: "app == 'db'"}}]
        "#,
    );
    assert_rule(&egress(&c, tcp(WEB, DB, 5432)), "default", "web-out", 0, true);
    assert_tier_default(&egress(&c, tcp(WEB, EXTERNAL, 443)), "default");
    assert!(allows(&c, tcp(CLIENT, WEB, 80)), "ingress is not governed");
}

#[test]
fn calico_types_default_to_both_when_there_are_both_rules() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: web}
        spec:
          selector: "app == 'web'"
          ingress: [{action: Allow, source: {selector: "app == 'client'"}}]
          egress: [{action: Allow, destination: {selector: "app == 'db'"}}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert_tier_default(&ingress(&c, tcp(DB, WEB, 80)), "default");
    assert!(allows(&c, tcp(WEB, DB, 5432)));
    assert_tier_default(&egress(&c, tcp(WEB, CLIENT, 80)), "default");
}

#[test]
fn explicit_types_override_the_rules() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: web}
        spec:
          selector: "app == 'web'"
          types: [Egress]
          ingress: [{action: Deny}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)), "ingress rules of an Egress-only policy are ignored");
    assert_tier_default(&egress(&c, tcp(WEB, DB, 5432)), "default");
}

#[test]
fn allow_is_final() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: first}
        spec:
          order: 10
          selector: "app == 'web'"
          ingress: [{action: Allow, protocol: TCP}, {action: Deny}]
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: second}
        spec: {order: 20, selector: "app == 'web'", ingress: [{action: Deny}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "first", 0, true);
    assert_rule(&ingress(&c, udp(CLIENT, WEB, 80)), "default", "first", 1, false);
}

#[test]
fn deny_is_final() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: first}
        spec:
          order: 10
          selector: "app == 'web'"
          ingress: [{action: Deny, protocol: TCP, destination: {ports: [22]}}]
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: second}
        spec: {order: 20, selector: "app == 'web'", ingress: [{action: Allow}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 22)), "default", "first", 0, false);
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "second", 0, true);
}

#[test]
fn pass_skips_the_rest_of_the_tier() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: security}
        spec: {order: 100}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: security.pass}
        spec: {tier: security, order: 1, selector: "app == 'web'", ingress: [{action: Pass, source: {selector: "app == 'client'"}}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: security.deny}
        spec: {tier: security, order: 2, selector: "app == 'web'", ingress: [{action: Deny}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: allow-client}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {selector: "app == 'client'"}}]}
        "#,
    );
    let d = ingress(&c, tcp(CLIENT, WEB, 80));
    assert_rule(&d, "default", "allow-client", 0, true);
    assert_eq!(d.matched, [matched("security", "security.pass", 0, Action::Pass, false)]);
    assert_rule(&ingress(&c, tcp(DB, WEB, 80)), "security", "security.deny", 0, false);
}

#[test]
fn pass_from_the_last_tier_goes_to_the_profiles() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: pass}
        spec: {selector: "app == 'web'", ingress: [{action: Pass}]}
        "#,
    );
    let d = ingress(&c, tcp(CLIENT, WEB, 80));
    assert_profile_allows(&d, "kns.prod");
    assert_eq!(d.matched, [matched("default", "pass", 0, Action::Pass, false)]);
}

#[test]
fn pass_with_no_profile_denies() {
    let c = cluster(
        r#"
        apiVersion: projectcalico.org/v3
        kind: WorkloadEndpoint
        metadata: {name: vm, namespace: prod, labels: {app: vm}}
        spec: {ipNetworks: [10.9.0.1/32]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: pass}
        spec: {selector: "app == 'vm'", ingress: [{action: Pass}]}
        "#,
    );
    let d = ingress(&c, tcp(EXTERNAL, "10.9.0.1", 80));
    assert_eq!((d.allowed, &d.decided_by), (false, &Decision::NoProfileMatch));
}

#[test]
fn log_continues_and_is_recorded_in_the_trail() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: log}
        spec: {order: 10, selector: "app == 'web'", ingress: [{action: Log}, {action: Log, protocol: UDP}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: allow}
        spec: {order: 20, selector: "app == 'web'", ingress: [{action: Allow}]}
        "#,
    );
    let d = ingress(&c, tcp(CLIENT, WEB, 80));
    assert_rule(&d, "default", "allow", 0, true);
    assert_eq!(d.matched, [matched("default", "log", 0, Action::Log, false)], "only matching Log rules are recorded");
}

#[test]
fn tier_whose_policies_decide_nothing_applies_its_default_deny() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: external-only}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {nets: [192.0.2.0/24]}}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(EXTERNAL, WEB, 80)), "default", "external-only", 0, true);
    assert_tier_default(&ingress(&c, tcp(CLIENT, WEB, 80)), "default");
}

#[test]
fn tier_without_applicable_policy_is_skipped() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: security}
        spec: {order: 100}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: security.db-only}
        spec: {tier: security, selector: "app == 'db'", ingress: [{action: Deny}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: security.web-egress}
        spec: {tier: security, selector: "app == 'web'", types: [Egress], egress: [{action: Deny}]}
        "#,
    );
    // Neither policy applies to prod/web's ingress: the tier is skipped, the profile allows.
    assert_profile_allows(&ingress(&c, tcp(CLIENT, WEB, 80)), "kns.prod");
    assert_rule(&ingress(&c, tcp(CLIENT, DB, 5432)), "security", "security.db-only", 0, false);
}

#[test]
fn tier_default_action_pass_continues_with_the_next_tier() {
    let state = |default_action: &str| {
        with_base(&format!(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: security}}\nspec: {{order: 100, defaultAction: {default_action}}}\n\
             ---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: security.external}}\n\
             spec: {{tier: security, selector: \"app == 'web'\", ingress: [{{action: Allow, source: {{nets: [192.0.2.0/24]}}}}]}}\n"
        ))
    };
    let c = state("Pass");
    assert_profile_allows(&ingress(&c, tcp(CLIENT, WEB, 80)), "kns.prod");
    assert_rule(&ingress(&c, tcp(EXTERNAL, WEB, 80)), "security", "security.external", 0, true);
    let c = state("Deny");
    assert_tier_default(&ingress(&c, tcp(CLIENT, WEB, 80)), "security");
}

#[test]
fn pod_that_no_policy_selects_is_allowed_by_its_namespace_profile() {
    let c = with_base("");
    let v = eval(&c, tcp(CLIENT, DEV_WEB, 80));
    assert!(v.allowed);
    assert_profile_allows(v.egress.as_ref().unwrap(), "kns.prod");
    assert_profile_allows(v.ingress.as_ref().unwrap(), "kns.dev");
}

#[test]
fn host_endpoint_without_policy_or_profile_denies() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: HostEndpoint
        metadata: {name: node1-eth0, labels: {host: node1}}
        spec: {node: node1, interfaceName: eth0, expectedIPs: [10.0.0.10]}
        "#,
    );
    let to_host = ingress(&c, tcp(CLIENT, "10.0.0.10", 22));
    assert_eq!((to_host.allowed, &to_host.decided_by), (false, &Decision::NoProfileMatch));
    let from_host = egress(&c, tcp("10.0.0.10", WEB, 80));
    assert_eq!((from_host.allowed, &from_host.decided_by), (false, &Decision::NoProfileMatch));
}

#[test]
fn host_endpoint_is_governed_by_policies_that_select_it() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: HostEndpoint
        metadata: {name: node1-eth0, labels: {host: node1}}
        spec: {node: node1, interfaceName: eth0, expectedIPs: [10.0.0.10]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: ssh}
        spec: {selector: "host == 'node1'", ingress: [{action: Allow, protocol: TCP, destination: {ports: [22]}}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(CLIENT, "10.0.0.10", 22)), "default", "ssh", 0, true);
    assert_tier_default(&ingress(&c, tcp(CLIENT, "10.0.0.10", 80)), "default");
}

// ---------------------------------------------------------------------------------------------
// Staged policies
// ---------------------------------------------------------------------------------------------

#[test]
fn staged_policy_never_changes_the_verdict() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: StagedGlobalNetworkPolicy
        metadata: {name: lockdown}
        spec: {order: 10, selector: "app == 'web'", ingress: [{action: Deny}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: allow}
        spec: {order: 20, selector: "app == 'web'", ingress: [{action: Allow}]}
        "#,
    );
    let v = eval(&c, tcp(CLIENT, WEB, 80));
    assert!(v.allowed);
    let d = v.ingress.unwrap();
    assert_rule(&d, "default", "allow", 0, true);
    assert_eq!(d.matched, [matched("default", "staged:lockdown", 0, Action::Deny, true)]);
    assert_eq!(v.staged_allowed, Some(false), "enforcing the staged policy would deny");
}

#[test]
fn staged_policy_set_replaces_the_enforced_policy_of_the_same_name() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: gate}
        spec: {selector: "app == 'web'", ingress: [{action: Deny}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: StagedGlobalNetworkPolicy
        metadata: {name: gate}
        spec: {selector: "app == 'web'", ingress: [{action: Allow}]}
        "#,
    );
    let v = eval(&c, tcp(CLIENT, WEB, 80));
    assert!(!v.allowed);
    assert_eq!(v.staged_allowed, Some(true));
}

#[test]
fn tier_whose_only_applicable_policies_are_staged_does_not_deny() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: Tier
        metadata: {name: security}
        spec: {order: 100}
        ---
        apiVersion: projectcalico.org/v3
        kind: StagedGlobalNetworkPolicy
        metadata: {name: security.only-external}
        spec: {tier: security, selector: "app == 'web'", ingress: [{action: Allow, source: {nets: [192.0.2.0/24]}}]}
        "#,
    );
    let v = eval(&c, tcp(CLIENT, WEB, 80));
    assert!(v.allowed);
    assert_profile_allows(v.ingress.as_ref().unwrap(), "kns.prod");
    assert_eq!(v.staged_allowed, Some(false), "enforced, the tier would end in its default deny");
}

#[test]
fn staged_verdict_is_absent_when_no_staged_policy_applies() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: StagedGlobalNetworkPolicy
        metadata: {name: db}
        spec: {selector: "app == 'db'", ingress: [{action: Deny}]}
        "#,
    );
    assert_eq!(eval(&c, tcp(CLIENT, WEB, 80)).staged_allowed, None);
    assert_eq!(eval(&c, tcp(CLIENT, DB, 5432)).staged_allowed, Some(false));
}

// ---------------------------------------------------------------------------------------------
// IP versions
// ---------------------------------------------------------------------------------------------

/// A global policy on prod/web whose first ingress rule is `deny` (flow YAML), then Allow.
fn deny_then_allow(deny: &str) -> palisade_policy::model::Cluster {
    with_base(&format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\n\
         spec: {{selector: \"app == 'web'\", ingress: [{deny}, {{action: Allow}}]}}\n"
    ))
}

#[test]
fn ip_version_rule_never_matches_the_other_version() {
    let c = deny_then_allow("{action: Deny, ipVersion: 6}");
    assert_rule(&ingress(&c, tcp(CLIENT6, WEB6, 80)), "default", "p", 0, false);
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "p", 1, true);
    let c = deny_then_allow("{action: Deny, ipVersion: 4}");
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "p", 0, false);
    assert_rule(&ingress(&c, tcp(CLIENT6, WEB6, 80)), "default", "p", 1, true);
}

#[test]
fn ipv4_nets_never_match_an_ipv6_flow() {
    let c = deny_then_allow("{action: Deny, source: {nets: [0.0.0.0/0]}}");
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "p", 0, false);
    assert_rule(&ingress(&c, tcp(CLIENT6, WEB6, 80)), "default", "p", 1, true);
}

#[test]
fn mixed_version_nets_match_by_the_flow_version() {
    let c = deny_then_allow("{action: Deny, source: {nets: [10.0.1.0/24, \"fd00::/64\"]}}");
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT6, WEB6, 80)));
    assert!(allows(&c, tcp(EXTERNAL, WEB, 80)));
    assert!(allows(&c, tcp(EXTERNAL6, WEB6, 80)));
}

/// Felix (`FilterRuleToIPVersion`) drops a rule for an IP version when all of its notNets are of
/// the other version, rather than reading "not in these IPv4 nets" as true for IPv6.
#[test]
fn ipv4_not_nets_never_match_an_ipv6_flow() {
    let c = deny_then_allow("{action: Deny, source: {notNets: [192.0.2.0/24]}}");
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "p", 0, false);
    assert_rule(&ingress(&c, tcp(EXTERNAL, WEB, 80)), "default", "p", 1, true);
    assert_rule(&ingress(&c, tcp(CLIENT6, WEB6, 80)), "default", "p", 1, true);
    let c = deny_then_allow("{action: Deny, destination: {notNets: [\"2001:db8::/32\"]}}");
    assert_rule(&ingress(&c, tcp(CLIENT6, WEB6, 80)), "default", "p", 0, false);
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "p", 1, true);
}

#[test]
fn icmp_rules_never_match_icmpv6_and_back() {
    let c = deny_then_allow("{action: Deny, protocol: ICMP}");
    assert!(!allows(&c, icmp(CLIENT, WEB, 8, 0)));
    assert!(allows(&c, icmp(CLIENT6, WEB6, 128, 0)));
    let c = deny_then_allow("{action: Deny, protocol: ICMPv6}");
    assert!(allows(&c, icmp(CLIENT, WEB, 8, 0)));
    assert!(!allows(&c, icmp(CLIENT6, WEB6, 128, 0)));
}

// ---------------------------------------------------------------------------------------------
// Rule criteria
// ---------------------------------------------------------------------------------------------

#[test]
fn not_nets_excludes_addresses() {
    let c = deny_then_allow("{action: Deny, source: {nets: [10.0.0.0/16], notNets: [10.0.2.0/24]}}");
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(EXTERNAL, WEB, 80)));
}

#[test]
fn not_selector_excludes_endpoints() {
    let c = deny_then_allow("{action: Deny, source: {notSelector: \"app == 'client'\"}}");
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(DB, WEB, 80)));
}

#[test]
fn not_ports_excludes_ports() {
    let c = deny_then_allow("{action: Deny, protocol: TCP, destination: {notPorts: [80, \"8000:8080\"]}}");
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(CLIENT, WEB, 8080)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 81)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 8081)));
    assert!(allows(&c, udp(CLIENT, WEB, 81)), "the rule is TCP only");
}

#[test]
fn not_protocol_excludes_a_protocol() {
    let c = deny_then_allow("{action: Deny, notProtocol: UDP}");
    assert!(allows(&c, udp(CLIENT, WEB, 53)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 53)));
    assert!(!allows(&c, icmp(CLIENT, WEB, 8, 0)));
}

#[test]
fn not_icmp_excludes_a_type_or_type_and_code() {
    let c = deny_then_allow("{action: Deny, protocol: ICMP, notICMP: {type: 8}}");
    assert!(allows(&c, icmp(CLIENT, WEB, 8, 0)));
    assert!(!allows(&c, icmp(CLIENT, WEB, 3, 4)));
    let c = deny_then_allow("{action: Deny, protocol: ICMP, notICMP: {type: 3, code: 4}}");
    assert!(allows(&c, icmp(CLIENT, WEB, 3, 4)));
    assert!(!allows(&c, icmp(CLIENT, WEB, 3, 1)));
}

#[test]
fn icmp_matches_type_and_optionally_code() {
    let c = deny_then_allow("{action: Deny, protocol: ICMP, icmp: {type: 8}}");
    assert!(!allows(&c, icmp(CLIENT, WEB, 8, 0)));
    assert!(!allows(&c, icmp(CLIENT, WEB, 8, 1)));
    assert!(allows(&c, icmp(CLIENT, WEB, 0, 0)));
    let c = deny_then_allow("{action: Deny, protocol: ICMP, icmp: {type: 3, code: 4}}");
    assert!(!allows(&c, icmp(CLIENT, WEB, 3, 4)));
    assert!(allows(&c, icmp(CLIENT, WEB, 3, 1)));
}

#[test]
fn port_ranges_are_inclusive() {
    let c = deny_then_allow("{action: Deny, protocol: TCP, destination: {ports: [\"8000:8100\", 22]}}");
    for (port, denied) in [(21, false), (22, true), (7999, false), (8000, true), (8100, true), (8101, false)] {
        assert_eq!(!allows(&c, tcp(CLIENT, WEB, port)), denied, "port {port}");
    }
}

#[test]
fn source_ports_match_the_source_port() {
    let c = deny_then_allow("{action: Deny, protocol: TCP, source: {ports: [\"40000:40010\"]}}");
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)), "the test flows use source port 40000");
    let c = deny_then_allow("{action: Deny, protocol: TCP, source: {ports: [80]}}");
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
}

#[test]
fn named_ports_combine_with_numeric_ports_by_or() {
    let c = deny_then_allow("{action: Deny, protocol: TCP, destination: {ports: [443, http]}}");
    assert!(!allows(&c, tcp(CLIENT, WEB, 443)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 8080)), "http is 8080 on prod/web");
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
}

#[test]
fn source_service_account_names() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: db}
        spec: {selector: "app == 'db'", ingress: [{action: Allow, source: {serviceAccounts: {names: [web-sa]}}}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(WEB, DB, 5432)), "default", "db", 0, true);
    assert_tier_default(&ingress(&c, tcp(CLIENT, DB, 5432)), "default");
    assert_tier_default(&ingress(&c, tcp(EXTERNAL, DB, 5432)), "default");
}

#[test]
fn destination_service_account_selector() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: client-out}
        spec:
          selector: "app == 'client'"
          egress: [{action: Allow, destination: {serviceAccounts: {selector: "role == 'backend'"}}}]
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, DB, 5432)), "prod/db runs as db-sa, role backend");
    assert_tier_default(&egress(&c, tcp(CLIENT, WEB, 80)), "default");
}

#[test]
fn service_account_names_and_selector_are_anded() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: db}
        spec:
          selector: "app == 'db'"
          ingress: [{action: Allow, source: {serviceAccounts: {names: [web-sa, default], selector: "role == 'frontend'"}}}]
        "#,
    );
    assert!(allows(&c, tcp(WEB, DB, 5432)));
    assert!(!allows(&c, tcp(CLIENT, DB, 5432)), "default has no role label");
}

#[test]
fn policy_service_account_selector() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: frontends}
        spec: {serviceAccountSelector: "role == 'frontend'", ingress: [{action: Deny}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: backends, namespace: prod}
        spec: {serviceAccountSelector: "role == 'backend'", ingress: [{action: Deny, protocol: UDP}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(CLIENT, WEB, 80)), "default", "frontends", 0, false);
    assert_rule(&ingress(&c, udp(CLIENT, DB, 53)), "default", "prod/backends", 0, false);
    assert_profile_allows(&ingress(&c, tcp(WEB, CLIENT, 80)), "kns.prod");
}

// ---------------------------------------------------------------------------------------------
// Selector scoping: namespaces, network sets, external addresses
// ---------------------------------------------------------------------------------------------

#[test]
fn namespaced_network_set_is_matched_by_a_rule_selector_in_its_namespace() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: NetworkSet
        metadata: {name: partners, namespace: prod, labels: {role: partner}}
        spec: {nets: [198.51.100.0/24]}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkSet
        metadata: {name: partners, namespace: dev, labels: {role: partner}}
        spec: {nets: [203.0.113.0/24]}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: partners, namespace: prod}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {selector: "role == 'partner'"}}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp("198.51.100.7", WEB, 443)), "default", "prod/partners", 0, true);
    assert_tier_default(&ingress(&c, tcp("203.0.113.7", WEB, 443)), "default");
}

#[test]
fn global_network_set_needs_namespace_selector_global_from_a_namespaced_policy() {
    let state = |source: &str| {
        with_base(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {{name: partners, labels: {{role: partner}}}}\n\
             spec: {{nets: [203.0.113.0/24]}}\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n\
             metadata: {{name: partners, namespace: prod}}\n\
             spec: {{selector: \"app == 'web'\", ingress: [{{action: Allow, source: {source}}}]}}\n"
        ))
    };
    let c = state("{selector: \"role == 'partner'\"}");
    assert!(!allows(&c, tcp("203.0.113.7", WEB, 443)), "the selector is limited to namespace prod");
    let c = state("{selector: \"role == 'partner'\", namespaceSelector: global()}");
    assert!(allows(&c, tcp("203.0.113.7", WEB, 443)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 443)), "global() selects nothing namespaced");
}

#[test]
fn global_policy_rule_selector_matches_a_global_network_set_directly() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkSet
        metadata: {name: feed, labels: {feed: bad}}
        spec: {nets: [203.0.113.0/24, "2001:db8:bad::/48"]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: block-feed}
        spec: {ingress: [{action: Deny, source: {selector: "feed == 'bad'"}}, {action: Pass}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp("203.0.113.7", WEB, 443)), "default", "block-feed", 0, false);
    assert_rule(&ingress(&c, tcp("2001:db8:bad::1", WEB6, 443)), "default", "block-feed", 0, false);
    assert_profile_allows(&ingress(&c, tcp("198.51.100.7", WEB, 443)), "kns.prod");
}

#[test]
fn global_policy_namespace_selector_uses_namespace_labels() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: isolate-dev}
        spec: {namespaceSelector: "env == 'dev'", ingress: [{action: Deny}]}
        "#,
    );
    assert_rule(&ingress(&c, tcp(CLIENT, DEV_WEB, 80)), "default", "isolate-dev", 0, false);
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
}

#[test]
fn global_policy_namespace_selector_all_selects_every_namespaced_endpoint_only() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: HostEndpoint
        metadata: {name: node1-eth0}
        spec: {node: node1, interfaceName: eth0, expectedIPs: [10.0.0.10], profiles: [allow-all]}
        ---
        apiVersion: projectcalico.org/v3
        kind: Profile
        metadata: {name: allow-all}
        spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: pods}
        spec: {namespaceSelector: all(), ingress: [{action: Deny}]}
        "#,
    );
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT, DEV_WEB, 80)));
    assert_profile_allows(&ingress(&c, tcp(CLIENT, "10.0.0.10", 22)), "allow-all");
}

#[test]
fn rule_namespace_selector_uses_namespace_labels() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: from-dev}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {namespaceSelector: "env == 'dev'"}}]}
        "#,
    );
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_WEB, WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)));
}

#[test]
fn rule_namespace_selector_all_matches_every_namespace_but_nothing_global() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkSet
        metadata: {name: anything, labels: {kind: net}}
        spec: {nets: [203.0.113.0/24]}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: cluster-only, namespace: prod}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {namespaceSelector: all()}}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp("203.0.113.7", WEB, 80)));
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)));
}

#[test]
fn namespaced_rule_selector_is_limited_to_the_policy_namespace() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: clients, namespace: prod}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {selector: "app == 'client'"}}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(DEV_CLIENT, WEB, 80)));
}

#[test]
fn namespaced_rule_namespace_selector_lifts_the_namespace_limit() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: dev-clients, namespace: prod}
        spec:
          selector: "app == 'web'"
          ingress: [{action: Allow, source: {selector: "app == 'client'", namespaceSelector: "env == 'dev'"}}]
        "#,
    );
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)), "prod is not selected by env == 'dev'");
    assert!(!allows(&c, tcp(DEV_WEB, WEB, 80)));
}

#[test]
fn namespaced_not_selector_alone_limits_the_match_to_the_policy_namespace() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: not-db, namespace: prod}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {notSelector: "app == 'db'"}}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(DB, WEB, 80)));
    assert!(!allows(&c, tcp(DEV_CLIENT, WEB, 80)), "another namespace");
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)), "no namespace at all");
}

#[test]
fn namespaced_service_account_match_is_limited_to_the_policy_namespace() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: default-sa, namespace: dev}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {serviceAccounts: {names: [default]}}}]}
        "#,
    );
    assert!(allows(&c, tcp(DEV_CLIENT, DEV_WEB, 80)));
    assert!(!allows(&c, tcp(CLIENT, DEV_WEB, 80)), "prod/client's service account is prod's default");
}

#[test]
fn global_rule_selector_matches_across_namespaces() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: clients}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {selector: "app == 'client'"}}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(allows(&c, tcp(DEV_CLIENT, DEV_WEB, 80)));
    assert!(!allows(&c, tcp(DB, WEB, 80)));
}

#[test]
fn selector_never_matches_an_external_address() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: endpoints-only}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {selector: all()}}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(EXTERNAL, WEB, 80)));
    assert!(!allows(&c, tcp(EXTERNAL6, WEB6, 80)));
}

#[test]
fn global_not_selector_is_satisfied_by_an_external_address() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: not-db}
        spec: {selector: "app == 'web'", ingress: [{action: Allow, source: {notSelector: "app == 'db'"}}]}
        "#,
    );
    assert!(allows(&c, tcp(EXTERNAL, WEB, 80)));
    assert!(allows(&c, tcp(DEV_CLIENT, WEB, 80)));
    assert!(!allows(&c, tcp(DB, WEB, 80)));
}

#[test]
fn selectors_match_by_address_on_either_side() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: client-to-db}
        spec: {selector: "app == 'client'", egress: [{action: Allow, destination: {selector: "app == 'db'"}}]}
        "#,
    );
    assert!(allows(&c, tcp(CLIENT, DB, 5432)));
    assert!(allows(&c, tcp(DEV_CLIENT, DB, 5432)));
    assert!(!allows(&c, tcp(CLIENT, WEB, 80)));
}

// ---------------------------------------------------------------------------------------------
// Combination of the two endpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn flow_needs_the_source_egress_and_the_destination_ingress() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: client-out}
        spec: {selector: "app == 'client'", egress: [{action: Deny, destination: {selector: "app == 'db'"}}, {action: Allow}]}
        ---
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: web-in}
        spec: {selector: "app == 'web'", ingress: [{action: Deny, source: {selector: "app == 'db'"}}, {action: Allow}]}
        "#,
    );
    let v = eval(&c, tcp(CLIENT, DB, 5432));
    assert!(!v.allowed, "egress denies");
    assert!(!v.egress.unwrap().allowed);
    assert!(v.ingress.unwrap().allowed);
    let v = eval(&c, tcp(DB, WEB, 80));
    assert!(!v.allowed, "ingress denies");
    assert!(v.egress.unwrap().allowed);
    assert!(!v.ingress.unwrap().allowed);
    assert!(allows(&c, tcp(CLIENT, WEB, 80)));
}

#[test]
fn addresses_that_are_no_endpoint_have_no_policy() {
    let c = with_base(
        r#"
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: deny-everything}
        spec: {selector: all(), types: [Ingress, Egress]}
        "#,
    );
    let v = eval(&c, tcp(EXTERNAL, "198.51.100.1", 80));
    assert!(v.allowed);
    assert!(v.egress.is_none() && v.ingress.is_none());
    let v = eval(&c, tcp(EXTERNAL, WEB, 80));
    assert!(!v.allowed);
    assert!(v.egress.is_none());
    assert_tier_default(v.ingress.as_ref().unwrap(), "default");
    let v = eval(&c, tcp(WEB, EXTERNAL, 80));
    assert!(!v.allowed);
    assert!(v.ingress.is_none());
}
