//! Flow descriptions as JSON lines, e.g.
//! `{"src":"10.0.1.1","dst":"10.0.2.2","protocol":"TCP","dst_port":80}`.
//!
//! `src_port`, `icmp_type` and `icmp_code` are optional; the protocol is a name or a number.
//! Other keys (such as an expected verdict) are kept for the caller.

use crate::eval::Flow;
use crate::model::proto;
use crate::resources::NumOrString;
use serde::Deserialize;
use std::net::IpAddr;

/// One flow line as written.
#[derive(Clone, Debug, Deserialize)]
pub struct FlowSpec {
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Protocol name or number.
    pub protocol: NumOrString,
    /// Source port (default 0).
    #[serde(default)]
    pub src_port: Option<i64>,
    /// Destination port (default 0).
    #[serde(default)]
    pub dst_port: Option<i64>,
    /// ICMP type.
    #[serde(default)]
    pub icmp_type: Option<i64>,
    /// ICMP code.
    #[serde(default)]
    pub icmp_code: Option<i64>,
    /// Expected verdict, `allow` or `deny` (used by tests and examples; not by evaluation).
    #[serde(default)]
    pub expect: Option<String>,
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
}

impl FlowSpec {
    /// Checks the fields and builds the flow.
    pub fn to_flow(&self) -> Result<Flow, String> {
        let addr = |name: &str, s: &str| s.parse::<IpAddr>().map_err(|_| format!("{name}: {s:?} is not an IP address"));
        let (src, dst) = (addr("src", &self.src)?, addr("dst", &self.dst)?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err("src and dst must be of the same IP version".into());
        }
        let protocol = match &self.protocol {
            NumOrString::Num(n) => u8::try_from(*n).ok().filter(|p| *p > 0).ok_or(format!("protocol: {n} is out of range 1-255"))?,
            NumOrString::Str(s) => proto::from_name(s).or_else(|| s.parse().ok()).ok_or(format!("protocol: unknown protocol {s:?}"))?,
        };
        let port = |name: &str, p: Option<i64>| -> Result<u16, String> {
            match p {
                None => Ok(0),
                Some(n) if !proto::has_ports(protocol) => Err(format!("{name}: {n} given, but protocol {protocol} has no ports")),
                Some(n) => u16::try_from(n).map_err(|_| format!("{name}: {n} is out of range 0-65535")),
            }
        };
        let icmp = |name: &str, v: Option<i64>| -> Result<Option<u8>, String> {
            match v {
                None => Ok(None),
                Some(_) if !matches!(protocol, proto::ICMP | proto::ICMPV6) => Err(format!("{name}: only for ICMP and ICMPv6")),
                Some(n) => u8::try_from(n).map(Some).map_err(|_| format!("{name}: {n} is out of range 0-255")),
            }
        };
        Ok(Flow {
            src,
            dst,
            protocol,
            src_port: port("src_port", self.src_port)?,
            dst_port: port("dst_port", self.dst_port)?,
            icmp_type: icmp("icmp_type", self.icmp_type)?,
            icmp_code: icmp("icmp_code", self.icmp_code)?,
        })
    }
}

/// Parses one JSON line into a flow description.
pub fn parse_line(line: &str) -> Result<FlowSpec, String> {
    serde_json::from_str(line).map_err(|e| e.to_string())
}
