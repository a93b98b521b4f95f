//! Invalid input is refused, never half-read: each error names the file, the resource
//! (`Kind namespace/name`) and the field, and one bad resource makes the whole load fail with
//! every error reported. Also how files are found and read: directories recursively
//! (`.yaml`/`.yml`/`.json` only), multi-document files and `kind: List`.

use palisade_policy::load::{load_paths, parse_str, Error};
use std::path::{Path, PathBuf};

/// Writes `yaml` to `state.yaml` in a fresh directory and loads it; returns the file's path and
/// the errors (panics if the state is accepted).
fn refused(yaml: &str) -> (PathBuf, Vec<Error>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    std::fs::write(&path, yaml).unwrap();
    match palisade_policy::load_cluster(&[&path]) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(errors) => (path, errors),
    }
}

/// The single error `yaml` is refused with, checked to name the file, `resource` and `field`,
/// and to say `message_part`.
fn assert_refused(yaml: &str, resource: &str, field: &str, message_part: &str) {
    let (path, errors) = refused(yaml);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let e = &errors[0];
    assert_eq!(e.file.as_deref(), Some(path.as_path()), "{e}");
    assert_eq!(e.resource.as_deref(), Some(resource), "{e}");
    assert_eq!(e.field.as_deref(), Some(field), "{e}");
    assert!(e.message.contains(message_part), "{e:?} does not say {message_part:?}");
}

/// A GlobalNetworkPolicy `p` with one ingress rule (flow-style YAML).
fn gnp_rule(rule: &str) -> String {
    format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec: {{ingress: [{rule}]}}\n")
}

/// A Kubernetes NetworkPolicy `prod/p` with one ingress rule (flow-style YAML).
fn knp_rule(rule: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
         spec: {{podSelector: {{}}, ingress: [{rule}]}}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Resource identity
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_kind_is_refused() {
    assert_refused(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\n",
        "Service prod/web",
        "kind",
        "unsupported apiVersion/kind v1/Service",
    );
}

#[test]
fn unknown_api_version_is_refused() {
    assert_refused(
        "apiVersion: projectcalico.org/v2\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n",
        "GlobalNetworkPolicy p",
        "kind",
        "projectcalico.org/v2/GlobalNetworkPolicy",
    );
    assert_refused(
        "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n",
        "NetworkPolicy prod/p",
        "kind",
        "networking.k8s.io/v1beta1/NetworkPolicy",
    );
}

#[test]
fn missing_kind_or_api_version_is_refused() {
    assert_refused("kind: Namespace\nmetadata: {name: prod}\n", "document 1", "apiVersion", "missing");
    assert_refused("apiVersion: v1\nmetadata: {name: prod}\n", "document 1", "kind", "missing");
}

#[test]
fn missing_metadata_name_is_refused() {
    assert_refused(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {labels: {a: b}}\n",
        "GlobalNetworkPolicy (document 2)",
        "metadata.name",
        "missing",
    );
}

#[test]
fn duplicate_resource_is_refused() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n";
    let np = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n";
    assert_refused(&format!("{ns}---\n{np}---\n{np}"), "NetworkPolicy prod/p", "metadata.name", "defined twice");
}

#[test]
fn same_name_in_another_namespace_or_kind_is_no_duplicate() {
    let yaml = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n---\n\
                apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: dev}\n---\n\
                apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec: {podSelector: {}}\n---\n\
                apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n";
    let loaded: Vec<_> = parse_str(yaml).unwrap().into_iter().map(|resource| palisade_policy::load::Loaded { resource, file: None }).collect();
    let cluster = palisade_policy::convert::build_cluster(&loaded).expect("no duplicates");
    assert_eq!(cluster.policies.len(), 4);
}

#[test]
fn duplicate_in_another_file_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let gnp = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n";
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, gnp).unwrap();
    std::fs::write(&b, gnp).unwrap();
    let errors = palisade_policy::load_cluster(&[dir.path()]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file.as_deref(), Some(b.as_path()));
    assert!(errors[0].message.contains(&a.display().to_string()), "{}", errors[0]);
}

#[test]
fn two_endpoints_with_the_same_address_are_refused() {
    let pod = |name: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: prod}}\nstatus: {{podIP: 10.0.0.1}}\n");
    assert_refused(&format!("{}---\n{}", pod("a"), pod("b")), "Pod prod/b", "status.podIP", "10.0.0.1 is also used by Pod prod/a");
}

#[test]
fn pod_and_workload_endpoint_with_the_same_address_are_refused() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: prod}\nstatus: {podIPs: [{ip: 10.0.0.9}, {ip: 10.0.0.1}]}\n---\n\
                apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: vm, namespace: prod}\n\
                spec: {ipNetworks: [10.0.0.5/32, 10.0.0.1/32]}\n";
    assert_refused(yaml, "WorkloadEndpoint prod/vm", "spec.ipNetworks[1]", "also used by Pod prod/a");
}

// ---------------------------------------------------------------------------------------------
// Fields of Calico rules
// ---------------------------------------------------------------------------------------------

#[test]
fn misspelt_rule_field_is_refused_as_unknown() {
    assert_refused(
        &gnp_rule("{action: Allow, destinaton: {ports: [80]}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].destinaton",
        "unknown field `destinaton`",
    );
}

#[test]
fn misspelt_spec_field_is_refused_as_unknown() {
    assert_refused(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {selectr: all()}\n",
        "GlobalNetworkPolicy p",
        "spec.selectr",
        "unknown field `selectr`",
    );
    assert_refused(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec: {podSelector: {}, ingress: [{form: []}]}\n",
        "NetworkPolicy prod/p",
        "spec.ingress[0].form",
        "unknown field `form`",
    );
}

#[test]
fn bad_selector_is_refused_with_its_position() {
    assert_refused(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {selector: \"app == \"}\n",
        "GlobalNetworkPolicy p",
        "spec.selector",
        "found end of selector at position 6",
    );
    assert_refused(
        &gnp_rule("{action: Allow, source: {selector: \"app = 'x'\"}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].source.selector",
        "at position",
    );
}

#[test]
fn bad_cidr_is_refused() {
    assert_refused(
        &gnp_rule("{action: Allow, source: {nets: [10.0.0.0/8, 10.0.0.300/24]}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].source.nets[1]",
        "not an IP address or CIDR",
    );
    assert_refused(
        &gnp_rule("{action: Allow, destination: {notNets: [10.0.0.0/33]}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].destination.notNets[0]",
        "10.0.0.0/33",
    );
}

#[test]
fn ports_without_protocol_are_refused() {
    assert_refused(&gnp_rule("{action: Allow, destination: {ports: [80]}}"), "GlobalNetworkPolicy p", "spec.ingress[0].protocol", "ports");
    assert_refused(
        &gnp_rule("{action: Allow, protocol: ICMP, source: {notPorts: [80]}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].protocol",
        "ports",
    );
}

#[test]
fn unknown_protocol_name_is_refused() {
    assert_refused(&gnp_rule("{action: Allow, protocol: TCPP}"), "GlobalNetworkPolicy p", "spec.ingress[0].protocol", "unknown protocol \"TCPP\"");
    assert_refused(&gnp_rule("{action: Allow, notProtocol: 256}"), "GlobalNetworkPolicy p", "spec.ingress[0].notProtocol", "out of range");
}

#[test]
fn icmp_code_without_type_is_refused() {
    assert_refused(
        &gnp_rule("{action: Allow, protocol: ICMP, icmp: {code: 0}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].icmp.code",
        "needs an ICMP type",
    );
    assert_refused(
        &gnp_rule("{action: Allow, protocol: ICMP, notICMP: {code: 0}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].notICMP.code",
        "needs an ICMP type",
    );
}

#[test]
fn icmp_match_with_protocol_tcp_is_refused() {
    assert_refused(&gnp_rule("{action: Allow, protocol: TCP, icmp: {type: 8}}"), "GlobalNetworkPolicy p", "spec.ingress[0].protocol", "ICMP");
    assert_refused(&gnp_rule("{action: Allow, notICMP: {type: 8}}"), "GlobalNetworkPolicy p", "spec.ingress[0].protocol", "ICMP");
}

#[test]
fn ip_version_contradicting_a_net_is_refused() {
    assert_refused(
        &gnp_rule("{action: Allow, ipVersion: 4, source: {nets: [\"fd00::/64\"]}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].source.nets",
        "not IPv4",
    );
    assert_refused(
        &gnp_rule("{action: Allow, ipVersion: 6, destination: {notNets: [10.0.0.0/8]}}"),
        "GlobalNetworkPolicy p",
        "spec.ingress[0].destination.notNets",
        "not IPv6",
    );
}

#[test]
fn ip_version_contradicting_the_protocol_is_refused() {
    assert_refused(&gnp_rule("{action: Allow, ipVersion: 6, protocol: ICMP}"), "GlobalNetworkPolicy p", "spec.ingress[0].ipVersion", "ipVersion 4");
}

#[test]
fn unknown_action_is_refused() {
    assert_refused(&gnp_rule("{action: Accept}"), "GlobalNetworkPolicy p", "spec.ingress[0].action", "unknown action \"Accept\"");
    assert_refused(&gnp_rule("{action: allow}"), "GlobalNetworkPolicy p", "spec.ingress[0].action", "unknown action \"allow\"");
}

#[test]
fn missing_action_is_refused() {
    assert_refused(&gnp_rule("{protocol: TCP}"), "GlobalNetworkPolicy p", "spec.ingress[0]", "missing field `action`");
}

#[test]
fn nonexistent_tier_is_refused() {
    assert_refused(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.p}\nspec: {tier: security}\n",
        "GlobalNetworkPolicy security.p",
        "spec.tier",
        "tier \"security\" does not exist",
    );
}

#[test]
fn unknown_tier_default_action_is_refused() {
    assert_refused(
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 1, defaultAction: Allow}\n",
        "Tier security",
        "spec.defaultAction",
        "unknown default action",
    );
}

// ---------------------------------------------------------------------------------------------
// Fields of Kubernetes NetworkPolicies
// ---------------------------------------------------------------------------------------------

#[test]
fn k8s_peer_with_ip_block_and_pod_selector_is_refused() {
    assert_refused(
        &knp_rule("{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}"),
        "NetworkPolicy prod/p",
        "spec.ingress[0].from[1]",
        "ipBlock cannot be combined",
    );
}

#[test]
fn k8s_ip_block_except_outside_the_cidr_is_refused() {
    assert_refused(
        &knp_rule("{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}}]}"),
        "NetworkPolicy prod/p",
        "spec.ingress[0].from[0].ipBlock.except[1]",
        "not strictly inside",
    );
    assert_refused(
        &knp_rule("{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}"),
        "NetworkPolicy prod/p",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "not strictly inside",
    );
}

#[test]
fn k8s_bad_ip_block_cidr_is_refused() {
    assert_refused(&knp_rule("{from: [{ipBlock: {cidr: 10.0.0.1}}]}"), "NetworkPolicy prod/p", "spec.ingress[0].from[0].ipBlock.cidr", "not a CIDR");
}

#[test]
fn k8s_end_port_below_port_is_refused() {
    assert_refused(
        &knp_rule("{ports: [{port: 8080, endPort: 8000}]}"),
        "NetworkPolicy prod/p",
        "spec.ingress[0].ports[0].endPort",
        "not below port 8080",
    );
}

#[test]
fn k8s_end_port_with_named_port_is_refused() {
    assert_refused(&knp_rule("{ports: [{port: http, endPort: 8000}]}"), "NetworkPolicy prod/p", "spec.ingress[0].ports[0].endPort", "named port");
}

#[test]
fn k8s_unsupported_port_protocol_is_refused() {
    assert_refused(
        &knp_rule("{ports: [{protocol: ICMP, port: 1}]}"),
        "NetworkPolicy prod/p",
        "spec.ingress[0].ports[0].protocol",
        "unsupported protocol \"ICMP\"",
    );
}

#[test]
fn k8s_unknown_match_expressions_operator_is_refused() {
    assert_refused(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
         spec: {podSelector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}}\n",
        "NetworkPolicy prod/p",
        "spec.podSelector.matchExpressions[0].operator",
        "unknown operator \"Equals\"",
    );
}

#[test]
fn k8s_in_without_values_is_refused() {
    assert_refused(
        &knp_rule("{from: [{namespaceSelector: {matchExpressions: [{key: env, operator: In, values: []}]}}]}"),
        "NetworkPolicy prod/p",
        "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        "operator In needs at least one value",
    );
    assert_refused(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
         spec: {podSelector: {matchExpressions: [{key: app, operator: NotIn}]}}\n",
        "NetworkPolicy prod/p",
        "spec.podSelector.matchExpressions[0].values",
        "operator NotIn needs at least one value",
    );
}

#[test]
fn k8s_missing_pod_selector_is_refused() {
    assert_refused(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec: {ingress: [{}]}\n",
        "NetworkPolicy prod/p",
        "spec.podSelector",
        "missing",
    );
}

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_yaml_is_refused() {
    let (path, errors) = refused("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file.as_deref(), Some(path.as_path()));
    assert_eq!(errors[0].resource.as_deref(), Some("document 2"));
    assert!(errors[0].message.contains("not valid YAML"), "{}", errors[0]);
}

#[test]
fn a_document_that_is_not_a_mapping_is_refused() {
    let (_, errors) = refused("- just\n- a list\n");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].resource.as_deref(), Some("document 1"));
}

#[test]
fn missing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let errors = load_paths(&[&missing]).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file.as_deref(), Some(missing.as_path()));
}

#[test]
fn every_error_is_reported_and_one_bad_resource_fails_the_load() {
    let yaml = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n",
        &gnp_rule("{action: Allow}"),
        &gnp_rule("{action: Allow, protocol: TCPP}").replace("name: p}", "name: q}"),
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: r}\nspec: {selector: \"(\"}\n",
    ]
    .join("---\n");
    let (_, errors) = refused(&yaml);
    let fields: Vec<(&str, &str)> = errors.iter().map(|e| (e.resource.as_deref().unwrap(), e.field.as_deref().unwrap())).collect();
    assert_eq!(fields, [("GlobalNetworkPolicy q", "spec.ingress[0].protocol"), ("GlobalNetworkPolicy r", "spec.selector")]);
}

#[test]
fn every_problem_in_one_rule_is_reported() {
    let (_, errors) = refused(&gnp_rule("{action: Nope, protocol: TCP, source: {nets: [bad], selector: \"!\"}}"));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_deref().unwrap()).collect();
    assert_eq!(fields, ["spec.ingress[0].action", "spec.ingress[0].source.nets[0]", "spec.ingress[0].source.selector"]);
}

#[test]
fn a_bad_rule_is_not_dropped_while_the_good_ones_stay() {
    // Were the bad first rule dropped, the Allow would become the policy's only rule.
    let yaml = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n\
                spec: {ingress: [{action: Deny, source: {nets: [10.0.0.0/99]}}, {action: Allow}]}\n";
    let (_, errors) = refused(yaml);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("spec.ingress[0].source.nets[0]"));
}

#[test]
fn errors_from_several_files_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ok = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n";
    // Errors found while reading (a syntax error, an unknown field) ...
    std::fs::write(dir.path().join("a.yaml"), "kind: [\n").unwrap();
    std::fs::write(dir.path().join("b.yaml"), gnp_rule("{action: Allow, sorce: {}}")).unwrap();
    std::fs::write(dir.path().join("c.yaml"), ok).unwrap();
    let errors = palisade_policy::load_cluster(&[dir.path()]).unwrap_err();
    let files: Vec<&Path> = errors.iter().map(|e| e.file.as_deref().unwrap()).collect();
    assert_eq!(files, [dir.path().join("a.yaml"), dir.path().join("b.yaml")], "{errors:#?}");
    // ... and errors found while validating.
    std::fs::write(dir.path().join("a.yaml"), gnp_rule("{action: Maybe}")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), knp_rule("{ports: [{port: 0}]}")).unwrap();
    let errors = palisade_policy::load_cluster(&[dir.path()]).unwrap_err();
    let files: Vec<&Path> = errors.iter().map(|e| e.file.as_deref().unwrap()).collect();
    assert_eq!(files, [dir.path().join("a.yaml"), dir.path().join("b.yaml")], "{errors:#?}");
}

#[test]
fn display_names_file_resource_and_field() {
    let (path, errors) = refused(&gnp_rule("{action: Allow, protocol: TCPP}"));
    let shown = errors[0].to_string();
    assert_eq!(shown, format!("{}: GlobalNetworkPolicy p: spec.ingress[0].protocol: {}", path.display(), errors[0].message));
}

#[test]
fn display_of_a_namespaced_resource_names_its_namespace() {
    let (path, errors) = refused(&knp_rule("{ports: [{port: 0}]}"));
    let shown = errors[0].to_string();
    assert!(shown.starts_with(&format!("{}: NetworkPolicy prod/p: spec.ingress[0].ports[0].port: ", path.display())), "{shown}");
}

#[test]
fn load_paths_reads_manifests_recursively_and_ignores_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let ns = |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
    std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    std::fs::write(dir.path().join("a.yaml"), ns("a")).unwrap();
    std::fs::write(dir.path().join("sub/b.yml"), ns("b")).unwrap();
    std::fs::write(dir.path().join("sub/deeper/c.json"), r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}"#).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "kind: [not yaml").unwrap();
    std::fs::write(dir.path().join("sub/README.md"), "# not a manifest: {").unwrap();
    std::fs::write(dir.path().join("flows.jsonl"), "{\"src\": \"10.0.0.1\"}\n").unwrap();
    let loaded = load_paths(&[dir.path()]).unwrap();
    let got: Vec<(&str, PathBuf)> = loaded
        .iter()
        .map(|l| (l.resource.metadata().name.as_str(), l.file.clone().unwrap().strip_prefix(dir.path()).unwrap().to_path_buf()))
        .collect();
    assert_eq!(got, [("a", "a.yaml".into()), ("b", "sub/b.yml".into()), ("c", "sub/deeper/c.json".into())]);
}

#[test]
fn an_explicit_file_is_read_whatever_its_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.txt");
    std::fs::write(&path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
    assert_eq!(load_paths(&[&path]).unwrap().len(), 1);
}

#[test]
fn multi_document_files_and_lists_are_read() {
    let yaml = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
                apiVersion: v1\nkind: List\nitems:\n\
                - {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n\
                - {apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: c}}\n---\n\
                apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicyList\nitems: [{apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: d}}]\n---\n";
    let resources = parse_str(yaml).unwrap();
    let got: Vec<(&str, &str)> = resources.iter().map(|r| (r.kind(), r.metadata().name.as_str())).collect();
    assert_eq!(got, [("Namespace", "a"), ("Namespace", "b"), ("GlobalNetworkPolicy", "c"), ("GlobalNetworkPolicy", "d")]);
}

#[test]
fn json_manifests_are_read() {
    let json = r#"{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "p"}, "spec": {"ingress": [{"action": "Deny"}]}}"#;
    let resources = parse_str(json).unwrap();
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0].display_id(), "GlobalNetworkPolicy p");
}

#[test]
fn error_in_a_list_item_names_the_item() {
    let yaml = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n- {apiVersion: v1, kind: Namespace, metadata: {}}\n";
    let errors = parse_str(yaml).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].resource.as_deref(), Some("Namespace (document 1, items[1])"));
    assert_eq!(errors[0].field.as_deref(), Some("metadata.name"));
}

#[test]
fn list_without_items_is_refused() {
    let errors = parse_str("apiVersion: v1\nkind: List\n").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].resource.as_deref(), errors[0].field.as_deref()), (Some("document 1"), Some("items")));
}
