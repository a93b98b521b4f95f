//! Resources as users write them: Kubernetes (`v1`, `networking.k8s.io/v1`) and Calico
//! (`projectcalico.org/v3`) manifests, deserialized field for field.
//!
//! These are the raw shapes; [`crate::model`] validates them and turns them into the normalized
//! policy model. Policy and rule specs reject unknown fields (a misspelt `destinaton:` must not
//! silently widen a rule); Pods and metadata accept the many fields we do not use.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `metadata` of any resource.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    /// Resource name.
    #[serde(default)]
    pub name: String,
    /// Namespace (namespaced kinds; `default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes int-or-string (ports) or a Calico number-or-string (ports, protocols).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum NumOrString {
    /// A number.
    Num(i64),
    /// A string.
    Str(String),
}

/// Kubernetes `LabelSelector`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Exact label matches.
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In`/`NotIn`.
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// `networking.k8s.io/v1` NetworkPolicy spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sNetworkPolicySpec {
    /// Pods the policy applies to (in its namespace).
    pub pod_selector: Option<LabelSelector>,
    /// `Ingress` and/or `Egress`.
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Option<Vec<K8sIngressRule>>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Option<Vec<K8sEgressRule>>,
    /// Only in Calico's StagedKubernetesNetworkPolicy: `Set` (default), `Delete`, `Learn`, `Ignore`.
    #[serde(default)]
    pub staged_action: Option<String>,
}

/// A Kubernetes ingress rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sIngressRule {
    /// Allowed sources (missing or empty: any).
    #[serde(default)]
    pub from: Option<Vec<K8sPeer>>,
    /// Allowed destination ports (missing or empty: any).
    #[serde(default)]
    pub ports: Option<Vec<K8sPort>>,
}

/// A Kubernetes egress rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sEgressRule {
    /// Allowed destinations (missing or empty: any).
    #[serde(default)]
    pub to: Option<Vec<K8sPeer>>,
    /// Allowed destination ports (missing or empty: any).
    #[serde(default)]
    pub ports: Option<Vec<K8sPort>>,
}

/// A Kubernetes NetworkPolicy peer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sPeer {
    /// Pods (in the policy's namespace unless `namespaceSelector` is set).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR with exceptions.
    #[serde(default)]
    pub ip_block: Option<K8sIpBlock>,
}

/// Kubernetes `ipBlock`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sIpBlock {
    /// The block.
    pub cidr: String,
    /// Sub-blocks excluded from it.
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

/// Kubernetes NetworkPolicy port.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Number or named container port; missing means all ports.
    #[serde(default)]
    pub port: Option<NumOrString>,
    /// Last port of a range starting at `port`.
    #[serde(default)]
    pub end_port: Option<i64>,
}

/// Pod spec fields the policy model reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Node the pod runs on.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Service account (default `default`).
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Host-networked pods are not workload endpoints.
    #[serde(default)]
    pub host_network: bool,
    /// Containers (for named ports).
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// A container's declared ports.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Declared ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// A container port.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name (for named-port rules).
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    pub container_port: i64,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// Pod status fields the policy model reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Primary IP.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// All IPs (dual stack).
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

/// One entry of `status.podIPs`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// Calico policy spec: NetworkPolicy, GlobalNetworkPolicy and their staged variants.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoPolicySpec {
    /// Tier (default `default`).
    #[serde(default)]
    pub tier: Option<String>,
    /// Order within the tier; lower first, unset last.
    #[serde(default)]
    pub order: Option<f64>,
    /// Endpoints the policy applies to.
    #[serde(default)]
    pub selector: Option<String>,
    /// Namespaces whose endpoints it applies to (global policies).
    #[serde(default)]
    pub namespace_selector: Option<String>,
    /// Service accounts whose endpoints it applies to.
    #[serde(default)]
    pub service_account_selector: Option<String>,
    /// `Ingress` and/or `Egress`.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Option<Vec<CalicoRule>>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Option<Vec<CalicoRule>>,
    /// Evaluate without connection tracking (host endpoints).
    #[serde(default)]
    pub do_not_track: bool,
    /// Evaluate before DNAT (host endpoints, ingress only).
    #[serde(default, rename = "preDNAT")]
    pub pre_dnat: bool,
    /// Also apply to traffic forwarded through host endpoints.
    #[serde(default)]
    pub apply_on_forward: bool,
    /// Staged policies: `Set` (default), `Delete`, `Learn` or `Ignore`.
    #[serde(default)]
    pub staged_action: Option<String>,
    /// Calico performance hints (accepted, no effect).
    #[serde(default)]
    pub performance_hints: Option<Vec<String>>,
}

/// A Calico rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoRule {
    /// `Allow`, `Deny`, `Log` or `Pass`.
    pub action: String,
    /// 4 or 6.
    #[serde(default)]
    pub ip_version: Option<i64>,
    /// Protocol name or number.
    #[serde(default)]
    pub protocol: Option<NumOrString>,
    /// Negated protocol.
    #[serde(default)]
    pub not_protocol: Option<NumOrString>,
    /// ICMP type/code match.
    #[serde(default, rename = "icmp")]
    pub icmp: Option<IcmpFields>,
    /// Negated ICMP match.
    #[serde(default, rename = "notICMP")]
    pub not_icmp: Option<IcmpFields>,
    /// Source match.
    #[serde(default)]
    pub source: Option<EntityRule>,
    /// Destination match.
    #[serde(default)]
    pub destination: Option<EntityRule>,
    /// L7 HTTP match (not supported by this dataplane; refused).
    #[serde(default)]
    pub http: Option<serde_json::Value>,
    /// Rule annotations (kept, no effect).
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// ICMP type and code.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IcmpFields {
    /// ICMP type.
    #[serde(default, rename = "type")]
    pub icmp_type: Option<i64>,
    /// ICMP code (needs a type).
    #[serde(default)]
    pub code: Option<i64>,
}

/// Calico `EntityRule` (source or destination of a rule).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// CIDRs.
    #[serde(default)]
    pub nets: Option<Vec<String>>,
    /// Excluded CIDRs.
    #[serde(default)]
    pub not_nets: Option<Vec<String>>,
    /// Endpoints and network sets whose labels match.
    #[serde(default)]
    pub selector: Option<String>,
    /// Endpoints and network sets whose labels do not match.
    #[serde(default)]
    pub not_selector: Option<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: Option<String>,
    /// Ports: numbers, `"first:last"` ranges, named ports.
    #[serde(default)]
    pub ports: Option<Vec<NumOrString>>,
    /// Excluded ports.
    #[serde(default)]
    pub not_ports: Option<Vec<NumOrString>>,
    /// Service accounts.
    #[serde(default)]
    pub service_accounts: Option<ServiceAccountMatch>,
    /// Kubernetes Service match (not supported; refused).
    #[serde(default)]
    pub services: Option<serde_json::Value>,
}

/// Calico `serviceAccounts` match.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Service account names (in the rule's namespaces).
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Selector over service-account labels.
    #[serde(default)]
    pub selector: Option<String>,
}

/// Calico Tier spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierSpec {
    /// Order among tiers; lower first, unset last.
    #[serde(default)]
    pub order: Option<f64>,
    /// `Deny` (default) or `Pass`.
    #[serde(default)]
    pub default_action: Option<String>,
}

/// A named port on an endpoint (Calico `EndpointPort`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Port name.
    pub name: String,
    /// Port number.
    pub port: i64,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: NumOrString,
}

/// Calico HostEndpoint spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpointSpec {
    /// Node the interface belongs to.
    #[serde(default)]
    pub node: Option<String>,
    /// Interface name, or `*` for all interfaces of the host.
    #[serde(default)]
    pub interface_name: Option<String>,
    /// Addresses of the interface.
    #[serde(default, rename = "expectedIPs")]
    pub expected_ips: Vec<String>,
    /// Profiles applied after policy.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Named ports.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// Calico WorkloadEndpoint spec (workloads that are not pods).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// Orchestrator (`k8s`, `openstack`, ...).
    #[serde(default)]
    pub orchestrator: Option<String>,
    /// Workload name.
    #[serde(default)]
    pub workload: Option<String>,
    /// Node it runs on.
    #[serde(default)]
    pub node: Option<String>,
    /// Pod name, for orchestrator `k8s`.
    #[serde(default)]
    pub pod: Option<String>,
    /// Endpoint name.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Service account.
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// Addresses (CIDRs, usually /32 or /128).
    #[serde(default, rename = "ipNetworks")]
    pub ip_networks: Vec<String>,
    /// Profiles applied after policy.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Host-side interface.
    #[serde(default)]
    pub interface_name: Option<String>,
    /// Named ports.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// Calico NetworkSet / GlobalNetworkSet spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSetSpec {
    /// Member CIDRs.
    #[serde(default)]
    pub nets: Vec<String>,
    /// Domain names (not supported; refused when set).
    #[serde(default)]
    pub allowed_egress_domains: Option<Vec<String>>,
}

/// Calico Profile spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Option<Vec<CalicoRule>>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Option<Vec<CalicoRule>>,
    /// Labels given to endpoints that use the profile.
    #[serde(default)]
    pub labels_to_apply: Option<BTreeMap<String, String>>,
}

/// One resource, tagged by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// Kubernetes Namespace.
    Namespace(Metadata),
    /// Kubernetes ServiceAccount.
    ServiceAccount(Metadata),
    /// Kubernetes Pod.
    Pod(Metadata, PodSpec, PodStatus),
    /// `networking.k8s.io/v1` NetworkPolicy.
    K8sNetworkPolicy(Metadata, K8sNetworkPolicySpec),
    /// Calico StagedKubernetesNetworkPolicy (a staged `networking.k8s.io/v1` NetworkPolicy).
    StagedK8sNetworkPolicy(Metadata, K8sNetworkPolicySpec),
    /// Calico NetworkPolicy (namespaced).
    NetworkPolicy(Metadata, CalicoPolicySpec),
    /// Calico GlobalNetworkPolicy.
    GlobalNetworkPolicy(Metadata, CalicoPolicySpec),
    /// Calico StagedNetworkPolicy.
    StagedNetworkPolicy(Metadata, CalicoPolicySpec),
    /// Calico StagedGlobalNetworkPolicy.
    StagedGlobalNetworkPolicy(Metadata, CalicoPolicySpec),
    /// Calico Tier.
    Tier(Metadata, TierSpec),
    /// Calico HostEndpoint.
    HostEndpoint(Metadata, HostEndpointSpec),
    /// Calico WorkloadEndpoint.
    WorkloadEndpoint(Metadata, WorkloadEndpointSpec),
    /// Calico NetworkSet (namespaced).
    NetworkSet(Metadata, NetworkSetSpec),
    /// Calico GlobalNetworkSet.
    GlobalNetworkSet(Metadata, NetworkSetSpec),
    /// Calico Profile.
    Profile(Metadata, ProfileSpec),
}

impl Resource {
    /// The resource's kind as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(..) => "Namespace",
            Resource::ServiceAccount(..) => "ServiceAccount",
            Resource::Pod(..) => "Pod",
            Resource::K8sNetworkPolicy(..) => "NetworkPolicy",
            Resource::StagedK8sNetworkPolicy(..) => "StagedKubernetesNetworkPolicy",
            Resource::NetworkPolicy(..) => "NetworkPolicy",
            Resource::GlobalNetworkPolicy(..) => "GlobalNetworkPolicy",
            Resource::StagedNetworkPolicy(..) => "StagedNetworkPolicy",
            Resource::StagedGlobalNetworkPolicy(..) => "StagedGlobalNetworkPolicy",
            Resource::Tier(..) => "Tier",
            Resource::HostEndpoint(..) => "HostEndpoint",
            Resource::WorkloadEndpoint(..) => "WorkloadEndpoint",
            Resource::NetworkSet(..) => "NetworkSet",
            Resource::GlobalNetworkSet(..) => "GlobalNetworkSet",
            Resource::Profile(..) => "Profile",
        }
    }

    /// The API group/version the kind belongs to.
    pub fn api_version(&self) -> &'static str {
        match self {
            Resource::Namespace(..) | Resource::ServiceAccount(..) | Resource::Pod(..) => "v1",
            Resource::K8sNetworkPolicy(..) => "networking.k8s.io/v1",
            _ => "projectcalico.org/v3",
        }
    }

    /// Whether the kind is a policy (Kubernetes or Calico, staged or not).
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            Resource::K8sNetworkPolicy(..)
                | Resource::StagedK8sNetworkPolicy(..)
                | Resource::NetworkPolicy(..)
                | Resource::GlobalNetworkPolicy(..)
                | Resource::StagedNetworkPolicy(..)
                | Resource::StagedGlobalNetworkPolicy(..)
        )
    }

    /// Whether the kind lives in a namespace.
    pub fn is_namespaced(&self) -> bool {
        matches!(
            self,
            Resource::ServiceAccount(..)
                | Resource::Pod(..)
                | Resource::K8sNetworkPolicy(..)
                | Resource::StagedK8sNetworkPolicy(..)
                | Resource::NetworkPolicy(..)
                | Resource::StagedNetworkPolicy(..)
                | Resource::WorkloadEndpoint(..)
                | Resource::NetworkSet(..)
        )
    }

    /// The resource's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Namespace(m) | Resource::ServiceAccount(m) => m,
            Resource::Pod(m, ..)
            | Resource::K8sNetworkPolicy(m, _)
            | Resource::StagedK8sNetworkPolicy(m, _)
            | Resource::NetworkPolicy(m, _)
            | Resource::GlobalNetworkPolicy(m, _)
            | Resource::StagedNetworkPolicy(m, _)
            | Resource::StagedGlobalNetworkPolicy(m, _)
            | Resource::Tier(m, _)
            | Resource::HostEndpoint(m, _)
            | Resource::WorkloadEndpoint(m, _)
            | Resource::NetworkSet(m, _)
            | Resource::GlobalNetworkSet(m, _)
            | Resource::Profile(m, _) => m,
        }
    }

    /// `Kind namespace/name` or `Kind name`, as used in error messages.
    pub fn display_id(&self) -> String {
        let m = self.metadata();
        match (&m.namespace, self.is_namespaced()) {
            (Some(ns), true) => format!("{} {}/{}", self.kind(), ns, m.name),
            _ => format!("{} {}", self.kind(), m.name),
        }
    }
}
